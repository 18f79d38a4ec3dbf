"""Bytes a slice in a store, on a real head-CT slice and on the synthetic phantoms.

``rsna plan`` projects a store's size from the real slice's figures (``rsna.plan``'s
``REAL_SLICE_BYTES``); this script measures them again and prints them beside the
phantoms', so the ratio real / phantom is seen in one run. The real slice is
pydicom-data's ``693_UNCR.dcm`` (a non-contrast axial head CT, 512x512; ``pip install
pydicom-data``, as the test extra does). One slice is thin evidence: a mid-head slice
carries more texture than the vertex or the skull base, so the figures lean high.

    python scripts/bench_store_size.py [--phantoms 48]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np

from rsna.data.codecs import codec_for
from rsna.data.dicom import DicomError
from rsna.data.sources import ImageSpec
from rsna.data.synthetic import SynthConfig, make_competition

CODECS = [("none", None), ("lossless", None), ("lossy", 80), ("lossy", 90), ("lossy", 95)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phantoms", type=int, default=48, help="synthetic slices (512x512)")
    args = parser.parse_args()
    from pydicom.data import get_testdata_file

    real = get_testdata_file("693_UNCR.dcm")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slices = max(1, args.phantoms // 2)
        comp = make_competition(Path(tmp), SynthConfig(patients=2, studies=1, slices=slices, size=512, seed=0), workers=1)  # fmt: skip
        phantoms = sorted((comp.root / "stage_2_train").glob("*.dcm"))
        print("size crop codec      real kB  phantom kB  real/phantom")
        for size in (256, 384, 512):
            for crop in ("none", "head"):
                pre = ImageSpec(size=size, crop=crop).preprocessor(reuse_buffers=False)
                images = []
                for path in phantoms:
                    try:
                        images.append(pre(path))
                    except DicomError:  # the competition's deliberately corrupt files
                        continue
                image = pre(real)
                for compression, quality in CODECS:
                    codec = codec_for(compression, quality=quality)
                    mine = len(codec.encode(image)) / 1000
                    theirs = float(np.mean([len(codec.encode(i)) for i in images])) / 1000
                    print(f"{size:4d} {crop:4s} {codec.tag:10s} {mine:8.1f} {theirs:10.1f} {mine / theirs:10.2f}")


if __name__ == "__main__":
    main()
