"""How a preprocessed image is stored: raw, lossless (zstd) or lossy (JPEG). Pure functions.

Chosen by measurement on the synthetic competition (``python scripts/bench_codecs.py``,
256x256x3 windowed uint8, one core):

* ``none``: the raw bytes, 196.6 kB a slice.
* ``lossless``: zstd level 3 over the interleaved rows: 33 kB (5.9x smaller), encoded at
  about 2,600 and decoded at about 10,000 slices/s on one core. PNG decodes at about
  1,300/s, too slow to feed a GPU from a few cores; WebP lossless compresses better but
  encodes at 41/s; a planar layout or a delta filter made zstd worse.
* ``lossy``: JPEG quality 95, the three windows as one colour image (YCbCr, 4:2:0):
  13.4 kB (14.7x smaller), mean absolute error 0.99 grey levels (1.38 in the brain
  window, the one with most detail), decoded at about 2,900/s. Any other number of
  channels is one grayscale JPEG of the channels side by side.

Each codec has a format version, recorded in the store: a store written with another
version is refused, never decoded into a wrong image.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from rsna.errors import RsnaError

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_QUALITY",
    "Codec",
    "CodecError",
    "Compression",
    "codec_for",
]

Compression = Literal["none", "lossless", "lossy"]
#: The values of ``rsna preprocess --compression``.
COMPRESSIONS: tuple[str, ...] = ("none", "lossless", "lossy")
#: JPEG quality of ``lossy`` unless ``--quality`` says otherwise.
DEFAULT_QUALITY = 95
#: zstd level of ``lossless``: level 9 saves 7% more and encodes 5x slower.
ZSTD_LEVEL = 3
#: Format version of each codec's bytes; bump it when what a blob means changes.
_VERSIONS = {"raw": 1, "zstd": 1, "jpeg": 1}
_local = threading.local()


class CodecError(RsnaError):
    """An unknown codec, or bytes that do not decode to the expected image."""


@dataclass(frozen=True)
class Codec:
    """A codec and its parameter (zstd level or JPEG quality; 0 for raw)."""

    name: Literal["raw", "zstd", "jpeg"]
    level: int = 0

    def __post_init__(self) -> None:
        if self.name not in _VERSIONS:
            raise CodecError(
                f"`codec` must be one of {sorted(_VERSIONS)}. Received: codec={self.name!r}"
            )
        if self.name == "jpeg" and not 1 <= self.level <= 100:
            raise CodecError(f"`quality` must be in 1..100. Received: quality={self.level!r}")

    @property
    def version(self) -> int:
        return _VERSIONS[self.name]

    @property
    def lossless(self) -> bool:
        return self.name != "jpeg"

    @property
    def compression(self) -> str:
        return {"raw": "none", "zstd": "lossless", "jpeg": "lossy"}[self.name]

    @property
    def tag(self) -> str:
        """A folder-name suffix: ``none``, ``lossless``, ``lossy95``."""
        return f"lossy{self.level}" if self.name == "jpeg" else self.compression

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "level": self.level,
            "version": self.version,
            "lossless": self.lossless,
            "library": _library(self.name),
        }

    @classmethod
    def from_json(cls, data: dict, *, where: str = "") -> Codec:
        """The codec a store records, refusing one written with another format version."""
        codec = cls(name=data["name"], level=int(data["level"]))
        if int(data["version"]) != codec.version:
            raise CodecError(
                f"{where}written with {codec.name} format version {data['version']}; this rsna "
                f"reads version {codec.version}. Rebuild it with `rsna preprocess --force`"
            )
        return codec

    def encode(self, image: np.ndarray) -> bytes:
        """The stored bytes of a uint8 (size, size, channels) image."""
        if self.name == "raw":
            return np.ascontiguousarray(image).tobytes()
        if self.name == "zstd":
            return _zstd_compressor(self.level).compress(np.ascontiguousarray(image).tobytes())
        ok, blob = cv2.imencode(".jpg", _jpeg_layout(image), [cv2.IMWRITE_JPEG_QUALITY, self.level])
        if not ok:
            raise CodecError(f"JPEG encoding failed for an image of shape {image.shape}")
        return blob.tobytes()

    def decode_into(self, blob: bytes | memoryview, out: np.ndarray) -> None:
        """Decode `blob` into `out`, a uint8 (size, size, channels) array (a batch row).

        Raises:
            CodecError: the bytes do not decode to an image of `out`'s shape.
        """
        if self.name == "jpeg":
            image = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise CodecError("the JPEG bytes do not decode")
            _from_jpeg_layout(image, out)
            return
        raw = blob if self.name == "raw" else _zstd_decompress(blob, out.nbytes)
        if len(raw) != out.nbytes:
            raise CodecError(f"{len(raw)} bytes decode to no image of shape {out.shape}")
        np.copyto(out, np.frombuffer(raw, np.uint8).reshape(out.shape))


def codec_for(compression: str, *, quality: int | None = None) -> Codec:
    """The codec of ``--compression`` (``none``, ``lossless``, ``lossy``).

    Raises:
        CodecError: an unknown compression, or a quality for a lossless one.
    """
    if compression not in COMPRESSIONS:
        raise CodecError(
            f"`compression` must be one of {COMPRESSIONS}. Received: compression={compression!r}"
        )
    if quality is not None and compression != "lossy":
        raise CodecError(
            f"`quality` applies to lossy compression only. Received: quality={quality}"
        )
    if compression == "none":
        return Codec("raw")
    if compression == "lossless":
        return Codec("zstd", ZSTD_LEVEL)
    return Codec("jpeg", DEFAULT_QUALITY if quality is None else quality)


def _jpeg_layout(image: np.ndarray) -> np.ndarray:
    """Three channels as one colour image; any other count side by side in grayscale."""
    if image.shape[2] == 3:
        return image
    return np.ascontiguousarray(image.transpose(0, 2, 1).reshape(image.shape[0], -1))


def _from_jpeg_layout(image: np.ndarray, out: np.ndarray) -> None:
    size, _, channels = out.shape
    if channels == 3 and image.shape == out.shape:
        np.copyto(out, image)
    elif image.ndim == 2 and image.shape == (size, size * channels):
        np.copyto(out, image.reshape(size, channels, size).transpose(0, 2, 1))
    else:
        raise CodecError(f"a JPEG of shape {image.shape} is no image of shape {out.shape}")


def _zstd_compressor(level: int):
    import zstandard

    key = f"zstd_c{level}"
    compressor = getattr(_local, key, None)
    if compressor is None:  # one per thread: zstandard's objects are not thread-safe
        compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
        setattr(_local, key, compressor)
    return compressor


def _zstd_decompress(blob: bytes | memoryview, size: int) -> bytes:
    import zstandard

    decompressor = getattr(_local, "zstd_d", None)
    if decompressor is None:
        decompressor = zstandard.ZstdDecompressor()
        _local.zstd_d = decompressor
    try:
        return decompressor.decompress(blob, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise CodecError(f"the zstd bytes do not decode ({exc})") from exc


def _library(name: str) -> str:
    if name == "zstd":
        import zstandard

        return f"zstandard {zstandard.__version__}"
    if name == "jpeg":
        return f"opencv {cv2.__version__}"
    return "numpy"
