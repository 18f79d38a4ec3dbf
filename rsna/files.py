"""Atomic file writes and cheap file fingerprints.

Every file `rsna` writes goes through :func:`atomic_path`: the content is written to a
temporary file in the same folder, then moved into place with :func:`os.replace`, so a
killed run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "atomic_folder",
    "atomic_path",
    "fingerprint",
    "read_json",
    "save_figure",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_parquet",
    "write_text",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it onto `path` if the block succeeds.

    The temporary name keeps the suffix, so writers that pick a format from the
    extension (NumPy, OpenCV, Matplotlib) behave as they would on the final name.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp{os.getpid()}{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; if the block succeeds, it replaces
    `path` and whatever was in it (renamed aside, then removed), so the folder never holds
    a mix of an old and a new result. On failure `path` is untouched."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    old = final.with_name(f".{final.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write `obj` as indented, key-sorted JSON, atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_parquet(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write `df` (index included) to a parquet file, atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp)
    return Path(path)


def write_csv(df: pd.DataFrame, path: str | os.PathLike[str], *, index: bool = False) -> Path:
    """Write `df` to a CSV file, atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index)
    return Path(path)


def fingerprint(path: str | os.PathLike[str]) -> dict[str, int]:
    """Size and modification time of `path`: enough to tell whether an input changed."""
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def save_figure(figure, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Write a Matplotlib figure as a PNG, atomically."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi)
    return Path(path)
