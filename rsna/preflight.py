"""Checks before any work: the store a config reads and the weights it starts from.

``rsna train``, ``rsna embed`` and ``rsna predict`` (and :mod:`rsna.training.runner`)
call these before they write anything, so a missing store or weights file is an error
with its fix, never a silent fallback to the DICOMs or to random weights.
Keras-free.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rsna.config import PRESET_CONFIG, Config, ConfigError
from rsna.data.cache import StoreMissing, complete_store
from rsna.data.paths import KAGGLE_INPUT

__all__ = [
    "WEIGHT_FOLDERS",
    "WeightsMissing",
    "check_store",
    "find_weights",
    "resolve_weights",
]

#: Where a weights file named in a config but absent at its path is looked for, by its
#: file name: Kaggle's attached datasets and models, and Keras's own download folder
#: (``keras.applications`` keeps ``*_notop.h5`` there after a first download).
WEIGHT_FOLDERS = (KAGGLE_INPUT, Path("~/.keras/models"))
#: How deep below each of WEIGHT_FOLDERS the search goes (a Kaggle Models mount is
#: ``/kaggle/input/<model>/<framework>/<variation>/<version>/``).
_MAX_DEPTH = 5


class WeightsMissing(ConfigError):
    """``model.weights`` is unset, or names a file or preset that is not here."""


def check_store(config: Config, *, command: str = "rsna preprocess CONFIG") -> Path | None:
    """The complete store `config` reads, or None with ``data.cache = false``.

    `command` is the one that builds it, quoted in the error (the CLI passes the exact
    command line, with the same config and ``--set`` options).

    Raises:
        rsna.data.cache.StoreMissing: ``data.cache = true`` and the store is not
            finished; the message ends with the command that builds it.
    """
    if not config.data.cache:
        return None
    try:
        return complete_store(config.data.work_dir, config.image.spec, config.codec)
    except StoreMissing as exc:
        raise StoreMissing(
            f"{exc}. Build it with `{command}`, or set data.cache = false to read the "
            "DICOMs (slow: every epoch decodes every file)"
        ) from None


def find_weights(name: str, folders: tuple[Path, ...] = WEIGHT_FOLDERS) -> Path | None:
    """The first file or keras-hub preset folder called `name` below `folders`
    (breadth first, at most ``_MAX_DEPTH`` levels, sorted so the choice is stable)."""
    for top in folders:
        level = [top.expanduser()]
        for _ in range(_MAX_DEPTH + 1):
            for folder in level:
                candidate = folder / name
                if candidate.is_file() or (candidate / PRESET_CONFIG).is_file():
                    return candidate
            level = sorted(c for f in level for c in _subfolders(f))
    return None


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [c for c in folder.iterdir() if c.is_dir() and not c.name.startswith(".")]
    except OSError:
        return []


def resolve_weights(config: Config, *, folders: tuple[Path, ...] = WEIGHT_FOLDERS) -> Config:
    """`config` with ``model.weights`` at a file or preset folder that exists.

    A path that does not exist is looked for by its file name under `folders`; the file
    found is printed and written into the returned config (so the run's config.toml
    names it). ``"random"`` and ``"imagenet"`` pass unchanged.

    Raises:
        WeightsMissing: ``model.weights`` is unset, or nothing of that name is found;
            the message gives the steps to attach the weights.
    """
    weights = config.model.weights
    if weights in ("random", "imagenet"):
        return config
    if weights is None:
        raise WeightsMissing(
            f"{config.name}: `model.weights` is not set. Name a Keras weights file "
            "(e.g. efficientnetb0_notop.h5) or a keras-hub preset folder, \"imagenet\" to "
            'download them (needs the internet), or "random" to train from scratch on purpose'
        )
    path = Path(weights)
    if path.is_file() or (path / PRESET_CONFIG).is_file():
        return config
    found = find_weights(path.name, folders)
    if found is None:
        places = ", ".join(str(f) for f in folders)
        raise WeightsMissing(
            f"{config.name}: `model.weights` not found: {path} (and no {path.name!r} below "
            f"{places}). To attach it on Kaggle: Add Input, then a dataset that holds "
            f"{path.name} (on a machine with internet, `python -c \"import keras; "
            f"keras.applications.{config.model.backbone}(include_top=False)\"` saves Keras's "
            f"file to ~/.keras/models/; upload that) or the Kaggle Models preset the README "
            f"names. Elsewhere, give its path with --set model.weights=PATH. Received: "
            f"weights={str(path)!r}"
        )
    print(f"model.weights: {path.name} found at {found}", flush=True)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, weights=found))

