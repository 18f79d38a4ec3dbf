"""Measure candidate codecs for the store on synthetic slices: size, speed, error.

The table behind the choice in ``rsna/data/codecs.py``: windowed 256x256x3 uint8 slices
of a synthetic competition at 512x512, encoded and decoded on one pinned core with
OpenCV single-threaded. Sizes are means per slice; rates are slices per second (best of
three decode passes); errors are in grey levels against the uncompressed image.

Usage::

    python scripts/bench_codecs.py [--slices 150]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import zstandard

from rsna.data.codecs import codec_for
from rsna.data.synthetic import SynthConfig, make_competition
from rsna.data.windowing import Preprocessor


def candidates() -> dict:
    """name -> (encode, decode) for 256x256x3 uint8 images."""

    def planar(x):
        return np.ascontiguousarray(x.transpose(2, 0, 1)).reshape(-1, x.shape[1])

    def unplanar(x):
        return np.ascontiguousarray(x.reshape(3, -1, x.shape[1]).transpose(1, 2, 0))

    def rsna_codec(compression, **options):
        codec = codec_for(compression, **options)

        def decode(blob):
            out = np.empty((256, 256, 3), np.uint8)
            codec.decode_into(blob, out)
            return out

        return codec.encode, decode

    zstd = {level: zstandard.ZstdCompressor(level=level) for level in (3, 9, 19)}
    unzstd = zstandard.ZstdDecompressor()

    def raw(blob):
        return np.frombuffer(blob, np.uint8).reshape(256, 256, 3)

    return {
        "none (rsna)": rsna_codec("none"),
        "zlib-1": (lambda x: zlib.compress(x.tobytes(), 1), lambda b: raw(zlib.decompress(b))),
        "zlib-6": (lambda x: zlib.compress(x.tobytes(), 6), lambda b: raw(zlib.decompress(b))),
        "zstd-3 = lossless (rsna)": rsna_codec("lossless"),
        "zstd-9": (lambda x: zstd[9].compress(x.tobytes()), lambda b: raw(unzstd.decompress(b))),
        "zstd-19": (lambda x: zstd[19].compress(x.tobytes()), lambda b: raw(unzstd.decompress(b))),
        "zstd-3 planar": (
            lambda x: zstd[3].compress(planar(x).tobytes()),
            lambda b: unplanar(np.frombuffer(unzstd.decompress(b), np.uint8).reshape(768, 256)),
        ),
        "png-1": (
            lambda x: cv2.imencode(".png", x, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes(),
            lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED),
        ),
        "png-9": (
            lambda x: cv2.imencode(".png", x, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes(),
            lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED),
        ),
        "webp lossless": (
            lambda x: cv2.imencode(".webp", x, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes(),
            lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED),
        ),
        "jpeg-95 colour 4:2:0 = lossy (rsna)": rsna_codec("lossy"),
        "jpeg-90 colour 4:2:0": rsna_codec("lossy", quality=90),
        "jpeg-80 planar grey": (
            lambda x: cv2.imencode(".jpg", planar(x), [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes(),
            lambda b: unplanar(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE)),
        ),
        "webp-90 planar grey": (
            lambda x: cv2.imencode(".webp", planar(x), [cv2.IMWRITE_WEBP_QUALITY, 90])[1].tobytes(),
            lambda b: unplanar(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE)),
        ),
    }


def slices(count: int) -> list[np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        config = SynthConfig(patients=max(2, count // 12), studies=1, slices=16, size=512, seed=3)
        make_competition(Path(tmp) / "c", config, workers=1)
        preprocessor = Preprocessor(size=256)
        images = []
        for path in sorted((Path(tmp) / "c" / "stage_2_train").glob("*.dcm"))[:count]:
            try:
                images.append(preprocessor(path).copy())
            except ValueError:
                pass  # the planted corrupt file
        return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=150)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)
    images = slices(args.slices)
    raw = images[0].nbytes
    print(f"{len(images)} slices, 256x256x3 uint8 ({raw / 1000:.1f} kB raw), one core")
    print(
        f"{'codec':36s} {'kB':>6s} {'x smaller':>9s} {'enc/s':>7s} {'dec/s':>7s} {'MAE':>6s} {'p99':>4s}"
    )
    for name, (encode, decode) in candidates().items():
        start = time.perf_counter()
        blobs = [encode(x) for x in images]
        encode_rate = len(images) / (time.perf_counter() - start)
        best = np.inf
        for _ in range(3):
            start = time.perf_counter()
            out = [decode(b) for b in blobs]
            best = min(best, time.perf_counter() - start)
        errors = np.concatenate(
            [np.abs(o.astype(int) - x).ravel() for o, x in zip(out, images, strict=True)]
        )
        size = np.mean([len(b) for b in blobs])
        print(
            f"{name:36s} {size / 1000:6.1f} {raw / size:9.1f} {encode_rate:7.0f} "
            f"{len(images) / best:7.0f} {errors.mean():6.2f} {np.percentile(errors, 99):4.0f}"
        )


if __name__ == "__main__":
    main()
