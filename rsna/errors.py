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
    """Base class for every error `rsna` raises on bad input."""


class DataWarning(UserWarning):
    """A recoverable oddity in the data, also counted in the run's report."""
