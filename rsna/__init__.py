"""rsna: RSNA Intracranial Hemorrhage Detection, from raw DICOMs to a validated submission.

:mod:`rsna.data` holds the data stages and :mod:`rsna.training` everything that touches
TensorFlow and Keras; the modules at the top (config, metrics, evaluate, predictions,
submission, plots) never load TensorFlow either, so importing this package is cheap.

The names most used in a notebook are here, each loaded from its module on first use::

    from rsna import DataGenerator, read_hu, preprocess, LABELS, weighted_log_loss
    from rsna import load_config, build_model  # build_model(load_config("demo"))
"""

from __future__ import annotations

import importlib

from rsna.errors import DataWarning, RsnaError

__version__ = "0.1.0"

#: Name -> the module that defines it; imported when the name is first asked for, so
#: ``import rsna`` loads neither TensorFlow nor pandas.
_LAZY = {
    "DataGenerator": "rsna.training.generator",
    "LABELS": "rsna.data.labels",
    "build_model": "rsna.training.models",
    "load_config": "rsna.config",
    "preprocess": "rsna.data.windowing",
    "read_hu": "rsna.data.dicom",
    "weighted_log_loss": "rsna.metrics",
}

__all__ = [
    "DataGenerator",
    "DataWarning",
    "LABELS",
    "RsnaError",
    "__version__",
    "build_model",
    "load_config",
    "preprocess",
    "read_hu",
    "weighted_log_loss",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rsna' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
