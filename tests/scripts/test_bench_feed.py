"""scripts/bench_feed.py runs end to end on a tiny competition: every loader, both peers'
file formats, the ceiling and the ratio line (the figures themselves are not asserted:
speed is checked by reading the script's table, never by a timed test)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_feed.py"


@pytest.mark.slow
def test_the_feed_benchmark_runs_every_loader_on_a_tiny_competition(tmp_path):
    env = {**os.environ, "RSNA_PROGRESS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, str(SCRIPT), "--slices", "40", "--batch-size", "4", "--rounds", "1", "--contexts", "1", "--core-counts", "1", "--keep", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^\| (rsna|peer) (.+?) \| 1 \| 1 \| ([\d,]+) ", done.stdout, re.M)
    assert {f"{a} {b}" for a, b, _ in rows} == {
        "rsna DataGenerator, lossless", "rsna DataGenerator, lossy", "rsna stream, lossless",
        "peer tf.data, JPEG", "peer tf.data, PNG", "peer PyDataset, PNG",
    }  # fmt: skip
    assert all(int(rate.replace(",", "")) > 0 for _, _, rate in rows)
    assert re.search(r"rsna DataGenerator, lossy / best peer \(peer .+\), context 1, 1 core\(s\): \d+\.\d\dx", done.stdout)  # fmt: skip
    assert len(list((tmp_path / "png").glob("*.png"))) == len(list((tmp_path / "jpeg").glob("*.jpg"))) > 20  # fmt: skip
