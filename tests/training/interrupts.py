"""Keras callbacks that stand in for a killed run, and record which epochs ran."""

from __future__ import annotations

import keras

__all__ = ["Interrupt", "RecordEpochs", "StopAfterFirstEpoch"]


class Interrupt(Exception):
    """Raised by :class:`StopAfterFirstEpoch`, as a kill would end the fit."""


class StopAfterFirstEpoch(keras.callbacks.Callback):
    """End the fit with :class:`Interrupt` after epoch 0, after every other callback saved."""

    def on_epoch_end(self, epoch, logs=None):
        raise Interrupt(f"killed after epoch {epoch}")


class RecordEpochs(keras.callbacks.Callback):
    """The epochs that began, in order."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)
