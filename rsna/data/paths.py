"""Find the competition data: the folder that holds ``stage_2_train.csv``.

Kaggle has moved the data before (``stage_2_train_images`` in 2019, ``stage_2_train``
now, under one or two levels of ``/kaggle/input``), so nothing is hard-coded: the
search looks for the label file and takes the image folders beside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rsna.errors import RsnaError

__all__ = [
    "KAGGLE_INPUT",
    "KAGGLE_WORKING",
    "SAMPLE_CSV",
    "TEST_DIRS",
    "TRAIN_CSV",
    "TRAIN_DIRS",
    "Competition",
    "CompetitionNotFound",
    "default_work_dir",
    "find_competition",
    "on_kaggle",
]

TRAIN_CSV = "stage_2_train.csv"
SAMPLE_CSV = "stage_2_sample_submission.csv"
TRAIN_DIRS = ("stage_2_train", "stage_2_train_images")
TEST_DIRS = ("stage_2_test", "stage_2_test_images")
KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
_MAX_DEPTH = 4


class CompetitionNotFound(RsnaError):
    """No folder with ``stage_2_train.csv`` and a train image folder was found."""


@dataclass(frozen=True)
class Competition:
    """Where the competition's files are."""

    root: Path
    train_csv: Path
    train_dir: Path
    test_dir: Path | None
    sample_csv: Path | None


def find_competition(root: str | os.PathLike[str] | None = None) -> Competition:
    """Locate the competition: in `root` (or below it), else /kaggle/input, else the cwd.

    Raises:
        CompetitionNotFound: with the list of places searched.
    """
    places = [Path(root)] if root is not None else [KAGGLE_INPUT, Path.cwd()]
    searched = []
    for place in places:
        for folder in _candidates(place):
            competition = _competition_at(folder)
            if competition is not None:
                return competition
        searched.append(str(place))
    raise CompetitionNotFound(
        f"No competition found: looked for {TRAIN_CSV} beside one of {list(TRAIN_DIRS)}, "
        f"up to {_MAX_DEPTH} folders deep in {searched}"
    )


def _candidates(place: Path) -> list[Path]:
    """`place` and every folder below it (breadth first, bounded) holding the label file."""
    if not place.is_dir():
        return []
    found, level = [], [place]
    for _ in range(_MAX_DEPTH + 1):
        found.extend(folder for folder in level if (folder / TRAIN_CSV).is_file())
        level = sorted(
            child
            for folder in level
            for child in _subfolders(folder)
            if child.name not in TRAIN_DIRS + TEST_DIRS  # never descend into 750k files
        )
    return found


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [child for child in folder.iterdir() if child.is_dir()]
    except OSError:
        return []


def _competition_at(folder: Path) -> Competition | None:
    """The competition in `folder`, its files named below its resolved root.

    Only the root is resolved: an image folder may be a link to another disk (a
    Kaggle dataset, a mounted volume), and its files are still named by where they
    appear, ``stage_2_train/ID_....dcm``.
    """
    root = folder.resolve()
    train_dir = next((root / d for d in TRAIN_DIRS if (root / d).is_dir()), None)
    if train_dir is None:
        return None
    test_dir = next((root / d for d in TEST_DIRS if (root / d).is_dir()), None)
    sample = root / SAMPLE_CSV
    return Competition(
        root=root,
        train_csv=root / TRAIN_CSV,
        train_dir=train_dir,
        test_dir=test_dir,
        sample_csv=sample if sample.is_file() else None,
    )


def on_kaggle() -> bool:
    """True inside a Kaggle notebook (it has /kaggle/working)."""
    return KAGGLE_WORKING.is_dir()


def default_work_dir() -> Path:
    """Where to put prepared data: /kaggle/working/work on Kaggle, ./work elsewhere."""
    return (KAGGLE_WORKING if on_kaggle() else Path.cwd()) / "work"
