"""rsna: RSNA Intracranial Hemorrhage Detection, from raw DICOMs to a validated submission.

The data stages (:mod:`rsna.dicom`, :mod:`rsna.windowing`, :mod:`rsna.labels`,
:mod:`rsna.metadata`, :mod:`rsna.folds`, :mod:`rsna.synthetic`) never import TensorFlow
or Keras, so importing this package is cheap.
"""

from rsna.errors import DataWarning, RsnaError

__version__ = "0.1.0"
__all__ = ["DataWarning", "RsnaError", "__version__"]
