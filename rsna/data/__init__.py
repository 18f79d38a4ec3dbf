"""The data stages: DICOM to HU, windows, labels, metadata, folds, the preprocessed cache,
augmentation, series order and the synthetic competition.

Nothing below this package imports TensorFlow or Keras (a test checks it), and it
imports nothing of ``rsna`` but itself and the core modules ``rsna.errors``,
``rsna.files`` and ``rsna.parallel``.
"""

__all__: list[str] = []
