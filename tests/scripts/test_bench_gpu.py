"""scripts/bench_gpu.py runs its tiny CPU case: every feed is timed and compared with the
in-memory ceiling (the rates themselves are not asserted)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_gpu.py"


@pytest.mark.slow
def test_the_fit_benchmark_times_three_feeds_on_cpu(tmp_path):
    env = {**os.environ, "RSNA_PROGRESS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [
        sys.executable, str(SCRIPT), "--backbone", "small_cnn", "--size", "32",
        "--batch-size", "16", "--slices", "60", "--epochs", "1", "--keep", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rates = dict(re.findall(r"^(in-memory tensors|DataGenerator \(rsna train\)|tf\.data stream) +([\d.]+) img/s", done.stdout, re.M))  # fmt: skip
    assert set(rates) == {"in-memory tensors", "DataGenerator (rsna train)", "tf.data stream"}
    assert all(float(v) > 0 for v in rates.values())
    assert re.search(r"small_cnn at 32 px, .*float32.*, on CPU", done.stdout), done.stdout
    assert len(re.findall(r"/ in-memory: \d+\.\d\dx", done.stdout)) == 2
