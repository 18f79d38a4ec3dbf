"""A run that spans sessions: the previous session's output attached read-only.

On Kaggle a later session attaches an earlier session's /kaggle/working as a read-only
input. The test does what the README's recipe says: session 1 prepares, preprocesses and
trains fold 0; session 2 sees the competition and that work folder through read-only
bind mounts (root alone cannot write there: the kernel refuses), copies the small run
folder to a writable place, sets ``data.out_dir`` to it, and runs every later command.
Any write under a read-only folder fails the command.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings

import pytest

from harness import prepared_competition, tiny_experiment
from rsna.config import dump_config
from rsna.errors import DataWarning

pytestmark = pytest.mark.slow

SESSION_2 = """
set -eu
for folder in "$COMP" "$WORK"; do
  mount --bind "$folder" "$folder"
  mount -o remount,ro,bind "$folder"
done
if touch "$WORK/probe" 2>/dev/null; then echo "the work folder is writable"; exit 3; fi
rsna() { "$PYTHON" -m rsna.cli "$@"; }
rsna train "$CONFIG" --fold all
rsna evaluate "$CONFIG"
rsna predict "$CONFIG"
rsna embed "$CONFIG"
rsna train "$CONFIG" --stage 2
rsna predict "$CONFIG" --stage 2
rsna plan "$CONFIG" --gpus t4x2 --rate 100 --slices 1000 > /dev/null
"""


def _mounts_allowed(tmp_path) -> str | None:
    """Why read-only bind mounts cannot be made here, or None."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "no unshare or mount command"
    probe = tmp_path / "probe"
    probe.mkdir()
    script = f'mount --bind "{probe}" "{probe}" && mount -o remount,ro,bind "{probe}" && ! touch "{probe}/x" 2>/dev/null'  # fmt: skip
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], capture_output=True)  # fmt: skip
    return None if done.returncode == 0 else f"read-only bind mounts refused: {done.stderr.decode()[-200:]}"


def test_a_later_session_reads_the_earlier_output_read_only(tmp_path):
    why = _mounts_allowed(tmp_path)
    if why:
        pytest.skip(why)
    from rsna.training import runner

    # session 1: everything under the work folder, as on /kaggle/working
    comp, work, _ = prepared_competition(tmp_path, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        first = tiny_experiment(work, work / "runs" / "s", name="s", train={"epochs": 1}, predict={"tta": ["none"]}, sequence={"units": 4, "epochs": 1})  # fmt: skip
        runner.train(first, [0], verbose=0)
    # session 2: the run folder copied out, the rest read-only
    out = tmp_path / "working" / "run"
    shutil.copytree(work / "runs" / "s", out)
    later = tiny_experiment(work, out, name="s", train={"epochs": 1}, predict={"tta": ["none"]}, sequence={"units": 4, "epochs": 1})  # fmt: skip
    config = dump_config(later, tmp_path / "working" / "s.toml")
    env = {"COMP": str(comp.root), "WORK": str(work), "CONFIG": str(config), "PYTHON": sys.executable, "RSNA_PROGRESS": "0", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp_path)}  # fmt: skip
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", SESSION_2],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "already trained" in done.stdout  # fold 0 from session 1, reused
    assert (out / "submission.csv").is_file() and (out / "stage2" / "submission.csv").is_file()
    assert (out / "fold_1" / "best.keras").is_file()
