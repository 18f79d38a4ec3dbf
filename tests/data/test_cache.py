"""rsna.data.cache: the preprocessed cache equals preprocess(), resumes after a kill, refuses mixing."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import TINY_SPEC
from rsna.cli import main
from rsna.data.cache import CacheError, CacheSpec, DicomImages, ImageCache, build_cache, cache_dir
from rsna.data.metadata import data_dir, read_metadata
from rsna.data.windowing import BONE, BRAIN, preprocess


def _digest(root: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.iterdir())
        if p.is_file()
    }


def test_cache_holds_what_preprocess_gives(tiny_work):
    cache = ImageCache(cache_dir(tiny_work, TINY_SPEC), expect=TINY_SPEC)
    meta = read_metadata(tiny_work)
    assert len(cache) == len(meta) and cache.shape == (32, 32, 3)
    base = data_dir(tiny_work)
    for image_id in meta.index[meta["readable"]][:20]:
        expected = preprocess(base / meta.at[image_id, "file"], size=32)
        np.testing.assert_array_equal(cache.read(image_id), expected)
    dicoms = DicomImages(tiny_work, TINY_SPEC)
    some = meta.index[meta["readable"]][5]
    np.testing.assert_array_equal(dicoms.read(some), cache.read(some))


def test_unreadable_slices_are_zeros_with_their_reason(tiny_work, tiny_competition):
    cache = ImageCache(cache_dir(tiny_work, TINY_SPEC))
    for image_id in (
        tiny_competition.manifest["corrupt"]["train"] + tiny_competition.manifest["corrupt"]["test"]
    ):
        assert not cache.readable(image_id)
        assert cache.reason(image_id).startswith("truncated pixel data")
        assert not cache.read(image_id).any()
    with pytest.raises(CacheError, match="image .ID_nope. is not here"):
        cache.read("ID_nope")


def test_reading_with_other_options_is_an_error(tiny_work):
    path = cache_dir(tiny_work, TINY_SPEC)
    with pytest.raises(CacheError, match="holds images made with size=32.*asked for size=64"):
        ImageCache(path, expect=CacheSpec(size=32 * 2))
    with pytest.raises(CacheError, match="asked for size=32, windows=brain,bone"):
        ImageCache(path, expect=CacheSpec(size=32, windows=(BRAIN, BONE)))
    with pytest.raises(CacheError, match="no cache here"):
        ImageCache(tiny_work / "nowhere")


def test_building_over_a_cache_with_other_options_needs_force(tiny_work, tmp_path):
    out = tmp_path / "c"
    build_cache(tiny_work, CacheSpec(size=16), out=out, shard_size=64, workers=1)
    with pytest.raises(
        CacheError, match="holds a cache made with size=16.*Use another folder, or force=True"
    ):
        build_cache(tiny_work, CacheSpec(size=24), out=out, shard_size=64, workers=1)
    result = build_cache(
        tiny_work, CacheSpec(size=24), out=out, shard_size=64, workers=1, force=True
    )
    assert ImageCache(out).spec.size == 24 and result.shards_written >= 1
    with pytest.raises(
        CacheError, match="`shard_size` must be a positive integer. Received: shard_size=0"
    ):
        build_cache(tiny_work, CacheSpec(size=24), out=out, shard_size=0)


def test_rerun_reuses_finished_shards(tiny_work, tmp_path):
    out = tmp_path / "c"
    first = build_cache(tiny_work, CacheSpec(size=16), out=out, shard_size=8, workers=1)
    assert first.shards_reused == 0 and first.shards_written > 3
    before = _digest(out)
    again = build_cache(tiny_work, CacheSpec(size=16), out=out, shard_size=8, workers=1)
    assert again.shards_written == 0 and again.shards_reused == first.shards_written
    assert _digest(out) == before


KILL_AFTER_THIRD_SHARD = """
import os, signal, sys
import rsna.data.cache as cache

real_replace = os.replace
done = []

def replace(src, dst):
    real_replace(src, dst)
    if str(dst).endswith(".npy"):
        done.append(dst)
        if len(done) == 3:
            os.kill(os.getpid(), signal.SIGKILL)

cache.os.replace = replace
cache.build_cache(sys.argv[1], cache.CacheSpec(size=16), out=sys.argv[2], shard_size=4, workers=2)
"""


@pytest.mark.slow
def test_kill_then_rerun_gives_the_uninterrupted_cache_byte_for_byte(tiny_work, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    build_cache(tiny_work, CacheSpec(size=16), out=whole, shard_size=4, workers=2)
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_THIRD_SHARD, str(tiny_work), str(resumed)],
        capture_output=True,
        timeout=60,
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    shards = sorted(resumed.glob("shard-*.npy"))
    assert len(shards) == 3  # killed mid-run, with whole shards only
    with pytest.raises(CacheError, match="incomplete"):
        ImageCache(resumed)
    result = build_cache(tiny_work, CacheSpec(size=16), out=resumed, shard_size=4, workers=2)
    assert result.shards_reused == 3
    assert _digest(resumed) == _digest(whole)
    assert not list(resumed.glob(".*partial*"))


def test_cli_preprocess(tiny_work, tmp_path, capsys):
    out = tmp_path / "c"
    args = [
        "preprocess",
        str(tiny_work),
        "--size",
        "16",
        "--windows",
        "brain,bone",
        "--out",
        str(out),
        "--workers",
        "1",
    ]
    assert main(args) == 0
    assert "2 unreadable (zeros)" in capsys.readouterr().out
    assert ImageCache(out, expect=CacheSpec(size=16, windows=(BRAIN, BONE))).shape == (16, 16, 2)
    assert main([*args[:-4], "--windows", "lung", "--out", str(out)]) == 2
    assert "Unknown window 'lung'" in capsys.readouterr().err
