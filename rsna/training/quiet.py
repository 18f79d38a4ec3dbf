"""Load TensorFlow without its start-up noise, for a console that shows only rsna's output.

TensorFlow 2.21 prints oneDNN, CUDA-driver and ``cuInit`` lines through absl before
``TF_CPP_MIN_LOG_LEVEL`` applies, so that variable alone does not silence them. While
TensorFlow imports and finds its devices, file descriptor 2 is pointed at the null
device; afterwards it is restored, so real errors still reach the terminal. C++ logging
is then held at fatal errors (TF logs benign notes at error level) and Python-side
TensorFlow logging at errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

__all__ = ["ONEDNN", "load_tensorflow_quietly", "muted_stderr", "tensorflow_defaults"]

#: oneDNN's CPU kernels. TensorFlow turns them on by itself only on CPUs with AVX-512
#: (Intel's since Cascade Lake, as Kaggle's Xeons); on an AVX2-only AMD EPYC it left them
#: off, and a small CNN trained 1.6-2.9x slower (issue 28 session, `rsna demo` 28 min
#: against 6). On, every x86 CPU runs the same kernels.
ONEDNN = ("TF_ENABLE_ONEDNN_OPTS", "1")


def tensorflow_defaults() -> None:
    """rsna's TensorFlow settings, for variables the user has not set: oneDNN on
    (:data:`ONEDNN`). Only a process that has not imported TensorFlow yet is affected."""
    os.environ.setdefault(*ONEDNN)


@contextlib.contextmanager
def muted_stderr() -> Iterator[None]:
    """Send what C code writes to file descriptor 2 to the null device, then restore it."""
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(null)
        os.close(saved)


def load_tensorflow_quietly() -> None:
    """Import TensorFlow and Keras and initialise the devices with stderr muted.

    Call it before anything else imports TensorFlow. An import that fails still
    raises, after stderr is restored.
    """
    tensorflow_defaults()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # its "E" lines are notes, too
    with muted_stderr():
        import keras  # noqa: F401
        import tensorflow as tf

        tf.config.list_physical_devices()
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
