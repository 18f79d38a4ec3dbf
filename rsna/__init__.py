"""rsna: RSNA Intracranial Hemorrhage Detection, from raw DICOMs to a validated submission.

The data stages (:mod:`rsna.data.dicom`, :mod:`rsna.data.windowing`, :mod:`rsna.data.labels`,
:mod:`rsna.data.metadata`, :mod:`rsna.data.folds`, :mod:`rsna.data.synthetic`) never import TensorFlow
or Keras, so importing this package is cheap.
"""

from rsna.errors import DataWarning, RsnaError

__version__ = "0.1.0"
__all__ = ["DataWarning", "RsnaError", "__version__"]
