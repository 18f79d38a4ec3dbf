"""Exceptions and warnings shared by every stage.

Every error that bad input can cause is a :class:`RsnaError`, a :class:`ValueError`
subclass, whose message names the file, the field and the value. Every recoverable
oddity is a :class:`DataWarning` and is also counted in the run's report.
"""

from __future__ import annotations

__all__ = [
    "DataWarning",
    "RsnaError",
]


class RsnaError(ValueError):
    """Base class for every error `rsna` raises on bad input.

    ``exit_now``: the process cannot clean up safely after this error (TensorFlow's
    runtime is broken, e.g. a worker was lost); the CLI reports it and exits at once.
    """

    exit_now: bool = False


class DataWarning(UserWarning):
    """A recoverable oddity in the data, also counted in the run's report."""
