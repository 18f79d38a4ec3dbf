"""rsna: RSNA Intracranial Hemorrhage Detection, from raw DICOMs to a validated submission.

:mod:`rsna.data` holds the data stages and :mod:`rsna.training` everything that touches
TensorFlow and Keras; the modules at the top (config, metrics, evaluate, predictions,
submission, plots) never load TensorFlow either, so importing this package is cheap.
"""

from rsna.errors import DataWarning, RsnaError

__version__ = "0.1.0"
__all__ = ["DataWarning", "RsnaError", "__version__"]
