"""rsna.data.cache: the store equals preprocess() in every codec, resumes after a kill,
splits into parts, refuses mixing, and never gives a wrong image from a damaged file."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
from hypothesis import given

from harness import TINY_CODEC, TINY_SPEC, fuzz_settings
from rsna import files
from rsna.cli import main
from rsna.data.cache import (
    SPEC_FILE,
    CacheError,
    ImageCache,
    build_cache,
    cache_dir,
    complete_store,
    plan_shards,
)
from rsna.data.codecs import codec_for
from rsna.data.metadata import data_dir, read_metadata
from rsna.data.sources import DicomImages, ImageSpec
from rsna.data.windowing import BONE, BRAIN, preprocess


def _digest(root: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.iterdir())
        if p.is_file()
    }


def test_cache_holds_what_preprocess_gives(tiny_work):
    cache = ImageCache(cache_dir(tiny_work, TINY_SPEC, TINY_CODEC), expect=TINY_SPEC)
    meta = read_metadata(tiny_work)
    assert len(cache) == len(meta) and cache.shape == (32, 32, 3)
    base = data_dir(tiny_work)
    for image_id in meta.index[meta["readable"]][:20]:
        expected = preprocess(base / meta.at[image_id, "file"], size=32)
        np.testing.assert_array_equal(cache.read(image_id), expected)
    dicoms = DicomImages(tiny_work, TINY_SPEC)
    some = meta.index[meta["readable"]][5]
    np.testing.assert_array_equal(dicoms.read(some), cache.read(some))


@pytest.fixture(scope="module")
def work_512(tmp_path_factory) -> Path:
    """A small competition of 512x512 slices, prepared: JPEG's error depends on the size."""
    import warnings

    from rsna.data.metadata import prepare
    from rsna.data.synthetic import SynthConfig, make_competition
    from rsna.errors import DataWarning

    root = tmp_path_factory.mktemp("c512")
    make_competition(root / "data", SynthConfig(patients=2, studies=1, slices=6, size=512, seed=4), workers=1)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        prepare(root / "data", root / "work", workers=1)
    return root / "work"


@pytest.mark.parametrize(
    ("compression", "exact"), [("none", True), ("lossless", True), ("lossy", False)]
)
def test_every_codec_round_trips(work_512, tmp_path, compression, exact):
    codec, spec = codec_for(compression), ImageSpec(size=256)
    result = build_cache(work_512, spec, codec=codec, out=tmp_path / "c", workers=1)
    cache = ImageCache(result.path, codec=codec)
    stored = files.read_json(result.path / SPEC_FILE)["codec"]
    assert (stored["name"], stored["lossless"], stored["version"]) == (
        codec.name,
        exact,
        codec.version,
    )
    meta = read_metadata(work_512)
    base = data_dir(work_512)
    errors = []
    for image_id in meta.index[meta["readable"]]:
        expected = preprocess(base / meta.at[image_id, "file"], size=256).astype(int)
        errors.append(np.abs(cache.read(image_id).astype(int) - expected).mean())
    if exact:
        assert max(errors) == 0
    else:
        assert 0 < np.mean(errors) <= 1.5  # the bound for a lossy store
    raw = len(meta) * 256 * 256 * 3
    assert result.bytes <= raw * {"none": 1.01, "lossless": 1 / 4, "lossy": 1 / 12}[compression]


def test_unreadable_slices_are_errors_with_their_reason(tiny_work, tiny_competition):
    cache = ImageCache(cache_dir(tiny_work, TINY_SPEC, TINY_CODEC))
    for image_id in (
        tiny_competition.manifest["corrupt"]["train"] + tiny_competition.manifest["corrupt"]["test"]
    ):
        assert not cache.readable(image_id)
        assert cache.reason(image_id).startswith("truncated pixel data")
        with pytest.raises(CacheError, match=f"{image_id} was unreadable at preprocessing: truncated pixel data"):
            cache.read(image_id)
    with pytest.raises(CacheError, match="image .ID_nope. is not here"):
        cache.read("ID_nope")


def test_reading_with_other_options_is_an_error(tiny_work):
    path = cache_dir(tiny_work, TINY_SPEC, TINY_CODEC)
    with pytest.raises(CacheError, match="holds images made with size=32.*asked for size=64"):
        ImageCache(path, expect=ImageSpec(size=32 * 2))
    with pytest.raises(CacheError, match="asked for size=32, windows=brain,bone"):
        ImageCache(path, expect=ImageSpec(size=32, windows=(BRAIN, BONE)))
    with pytest.raises(CacheError, match="stored with codec lossless; asked for lossy95"):
        ImageCache(path, codec=codec_for("lossy"))
    with pytest.raises(CacheError, match="no cache here"):
        ImageCache(tiny_work / "nowhere")


def test_a_store_of_another_format_or_codec_version_is_refused(tiny_work, tmp_path):
    out = tmp_path / "c"
    build_cache(tiny_work, ImageSpec(size=16), out=out, workers=1)
    stored = files.read_json(out / SPEC_FILE)
    files.write_json(out / SPEC_FILE, {**stored, "codec": {**stored["codec"], "version": 99}})
    with pytest.raises(
        CacheError, match="written with zstd format version 99; this rsna reads version 1"
    ):
        ImageCache(out)
    old = {k: v for k, v in stored.items() if k not in ("format", "codec")}  # an rsna 0.1 cache
    files.write_json(out / SPEC_FILE, old)
    with pytest.raises(CacheError, match="made by rsna's store format 1.*rebuild it"):
        ImageCache(out)


def test_one_corrupted_byte_fails_loudly_naming_the_shard_and_the_image(tiny_work, tmp_path):
    out = tmp_path / "c"
    build_cache(tiny_work, ImageSpec(size=16), out=out, shard_size=8, workers=1)
    cache = ImageCache(out)
    index = cache.index[cache.index["ok"]]
    victim = index.iloc[len(index) // 2]
    shard = cache.shard_path(int(victim["shard"]))
    data = bytearray(shard.read_bytes())
    data[int(victim["offset"]) + 12 + int(victim["length"]) // 2] ^= 0x01  # one bit of its data
    shard.write_bytes(bytes(data))
    cache = ImageCache(out)
    with pytest.raises(CacheError, match=f"{shard.name}.*image {victim.name}: .*checksum mismatch"):
        cache.read(victim.name)
    others = index[index["shard"] != victim["shard"]]
    assert cache.read(others.index[0]).shape == (16, 16, 3)  # the rest of the store still reads


def test_a_truncated_shard_fails_loudly(tiny_work, tmp_path):
    out = tmp_path / "c"
    build_cache(tiny_work, ImageSpec(size=16), out=out, shard_size=8, workers=1)
    cache = ImageCache(out)
    last = cache.index[cache.index["ok"]].iloc[-1]
    shard = cache.shard_path(int(last["shard"]))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(
        CacheError, match=f"{shard.name}.*image {last.name}: .*ends inside the record"
    ):
        ImageCache(out).read(last.name)


def test_building_over_a_cache_with_other_options_needs_force(tiny_work, tmp_path):
    out = tmp_path / "c"
    build_cache(tiny_work, ImageSpec(size=16), out=out, shard_size=64, workers=1)
    with pytest.raises(
        CacheError, match="holds a cache made with size=16.*Use another folder, or force=True"
    ):
        build_cache(tiny_work, ImageSpec(size=24), out=out, shard_size=64, workers=1)
    result = build_cache(
        tiny_work, ImageSpec(size=24), out=out, shard_size=64, workers=1, force=True
    )
    assert ImageCache(out).spec.size == 24 and result.shards_written >= 1
    with pytest.raises(
        CacheError, match="`shard_size` must be a positive integer. Received: shard_size=0"
    ):
        build_cache(tiny_work, ImageSpec(size=24), out=out, shard_size=0)
    with pytest.raises(
        CacheError, match="`shard_index` must be in \\[0, num_shards=2\\). Received: shard_index=2"
    ):
        build_cache(tiny_work, ImageSpec(size=24), out=out, num_shards=2, shard_index=2)


def test_rerun_reuses_finished_shards(tiny_work, tmp_path):
    out = tmp_path / "c"
    first = build_cache(tiny_work, ImageSpec(size=16), out=out, shard_size=8, workers=1)
    assert first.shards_reused == 0 and first.shards_written > 3
    before = _digest(out)
    again = build_cache(tiny_work, ImageSpec(size=16), out=out, shard_size=8, workers=1)
    assert again.shards_written == 0 and again.shards_reused == first.shards_written
    assert _digest(out) == before


def test_shards_hold_whole_series(tiny_work):
    cache = ImageCache(cache_dir(tiny_work, TINY_SPEC, TINY_CODEC))
    series = cache.index[cache.index["series_uid"] != ""]
    assert (series.groupby("series_uid")["shard"].nunique() == 1).all()  # neighbours share a shard
    order = pd.DataFrame({"series_uid": list("aaabbcccc") + ["", ""]})
    assert plan_shards(order, 4) == [range(0, 5), range(5, 9), range(9, 11)]  # "" rows cut anywhere
    assert plan_shards(order, 1) == [
        range(0, 3),
        range(3, 5),
        range(5, 9),
        range(9, 10),
        range(10, 11),
    ]


def test_parts_on_several_machines_make_the_single_run_store(tiny_work, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    build_cache(tiny_work, ImageSpec(size=16), out=whole, shard_size=8, workers=1)
    first = build_cache(tiny_work, ImageSpec(size=16), out=parts, shard_size=8, workers=1, num_shards=2, shard_index=0)  # fmt: skip
    assert not first.complete and first.shards_written > 0 and first.shards_missing > 0
    with pytest.raises(CacheError, match="incomplete"):
        ImageCache(parts)
    second = build_cache(tiny_work, ImageSpec(size=16), out=parts, shard_size=8, workers=1, num_shards=2, shard_index=1)  # fmt: skip
    assert second.complete and second.shards_written == first.shards_missing
    assert _digest(parts) == _digest(whole)  # no image copied, the same bytes


KILL_AFTER_THIRD_SHARD = """
import os, signal, sys
import rsna.data.cache as cache
from rsna.data.sources import ImageSpec

real_replace = os.replace
done = []

def replace(src, dst):
    real_replace(src, dst)
    if str(dst).endswith(".tfrecord"):
        done.append(dst)
        if len(done) == 3:
            os.kill(os.getpid(), signal.SIGKILL)

cache.os.replace = replace
cache.build_cache(sys.argv[1], ImageSpec(size=16), out=sys.argv[2], shard_size=4, workers=2)
"""


@pytest.mark.slow
def test_kill_then_rerun_gives_the_uninterrupted_cache_byte_for_byte(tiny_work, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    build_cache(tiny_work, ImageSpec(size=16), out=whole, shard_size=4, workers=2)
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_THIRD_SHARD, str(tiny_work), str(resumed)],
        capture_output=True,
        timeout=60,
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    shards = sorted(resumed.glob("shard-*.tfrecord"))
    assert len(shards) == 3  # killed mid-run, with whole shards only
    with pytest.raises(CacheError, match="incomplete"):
        ImageCache(resumed)
    result = build_cache(tiny_work, ImageSpec(size=16), out=resumed, shard_size=4, workers=2)
    assert result.shards_reused == 3
    assert _digest(resumed) == _digest(whole)
    assert not list(resumed.glob(".*partial*"))


def test_cli_preprocess_builds_the_store_its_config_reads(tiny_work, tmp_path, capsys):
    """`rsna preprocess CONFIG` writes where `DataGenerator.from_config` looks, with the
    config's size, windows, crop and codec; --set changes both alike."""
    from rsna.config import load_config, parse_override

    sets = [f"data.work_dir='{tiny_work}'", "image.size=32", "image.windows='brain,bone'",
            "image.crop='head'", "data.compression='lossy'", "data.quality=90"]  # fmt: skip
    args = ["preprocess", "demo", *(w for s in sets for w in ("--set", s)), "--workers", "1"]
    assert main(args) == 0
    assert "2 unreadable (zeros)" in capsys.readouterr().out
    config = load_config("demo", overrides={k: v for k, v in (parse_override(s) for s in sets)})
    store = complete_store(tiny_work, config.image.spec, config.codec)
    cache = ImageCache(store, expect=config.image.spec, codec=config.codec)
    assert cache.shape == (32, 32, 2) and config.image.spec.crop == "head"
    assert main([*args, "--num-shards", "2", "--shard-index", "5"]) == 2
    assert (
        "`shard_index` must be in [0, num_shards=2). Received: shard_index=5"
        in capsys.readouterr().err
    )
    # the old form, a work folder in the config's place, says what to write instead
    assert main(["preprocess", str(tiny_work)]) == 2
    assert "takes a config, not a work folder" in capsys.readouterr().err


def test_a_store_that_would_not_fit_stops_after_its_first_shard(tiny_work, tmp_path, monkeypatch, capsys):
    from collections import namedtuple

    import rsna.data.cache as cache

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    out = tmp_path / "store"
    with pytest.raises(CacheError, match=r"the store would not fit: .* GB still to write .* 1 finished shard\(s\) are kept"):
        build_cache(tiny_work, ImageSpec(size=16), out=out, shard_size=4, workers=1)
    assert "kB a slice on 1 shard(s); projected" in capsys.readouterr().out
    assert len(list(out.glob("shard-*.tfrecord"))) == 1
    monkeypatch.undo()
    result = build_cache(tiny_work, ImageSpec(size=16), out=out, shard_size=4, workers=1)
    assert result.complete and result.shards_reused == 1


def test_parts_built_with_other_options_are_never_merged(tiny_work, tmp_path):
    """Half a store here, the other half "on another machine" with other windows, the
    shards copied together: the rerun that would write the index refuses, naming both."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    build_cache(tiny_work, ImageSpec(size=16), out=ours, shard_size=8, workers=1, num_shards=2, shard_index=0)  # fmt: skip
    other = ImageSpec(size=16, windows=(BRAIN, BONE, BRAIN))
    build_cache(tiny_work, other, out=theirs, shard_size=8, workers=1, num_shards=2, shard_index=1)  # fmt: skip
    for path in theirs.glob("shard-*"):
        if not (ours / path.name).exists():
            shutil.copy(path, ours / path.name)
    with pytest.raises(CacheError, match=r"shard \d+ was built with other options \(size=16, windows=brain,bone,brain.*than this store \(size=16, windows=brain,subdural,soft"):
        build_cache(tiny_work, ImageSpec(size=16), out=ours, shard_size=8, workers=1)
    assert not (ours / "index.parquet").exists()


def test_a_stale_or_edited_index_never_returns_another_images_pixels(tiny_work, tmp_path):
    out = tmp_path / "store"
    build_cache(tiny_work, ImageSpec(size=16), out=out, shard_size=8, workers=1)
    index = pd.read_parquet(out / "index.parquet")
    readable = index[index["ok"]]
    shard = readable["shard"].mode()[0]
    a, b = readable.index[readable["shard"] == shard][:2]
    out_image = np.zeros((16, 16, 3), np.uint8)
    swapped = index.copy()
    for column in ("offset", "length"):
        swapped.loc[[a, b], column] = index.loc[[b, a], column].to_numpy()
    files.write_parquet(swapped, out / "index.parquet")
    with pytest.raises(CacheError, match=f"is not image {a}'s .*the index is stale or edited"):
        ImageCache(out).read_into(a, out_image)
    renamed = index.rename(index={a: b, b: a})  # image IDs permuted within a shard
    files.write_parquet(renamed, out / "index.parquet")
    with pytest.raises(CacheError, match="is not image"):
        ImageCache(out).read_into(a, out_image)
    files.write_parquet(index, out / "index.parquet")
    ImageCache(out).read_into(a, out_image)  # the true index reads


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("cache.json", b"{not json", "cache.json: unreadable"),
        ("cache.json", b"[1, 2]", "cache.json: not a JSON object"),
        ("cache.json", b'{"format": 3, "complete": true}', "cache.json: not a store description"),
        ("cache.json", b"\xff\xfe\x00", "cache.json: unreadable"),
        ("index.parquet", b"PAR1 not really", "index.parquet: unreadable"),
        ("index.parquet", None, "index.parquet: not this store's index"),
    ],
)
def test_a_corrupt_store_file_is_a_cache_error(tiny_work, tmp_path, name, content, message):
    out = tmp_path / "store"
    build_cache(tiny_work, ImageSpec(size=16), out=out, shard_size=16, workers=1)
    if content is None:  # a readable parquet file without the tag column
        files.write_parquet(pd.read_parquet(out / name).drop(columns="tag"), out / name)
    else:
        (out / name).write_bytes(content)
    with pytest.raises(CacheError, match=message):
        ImageCache(out)


@pytest.fixture(scope="module")
def fuzz_store(tiny_work, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "store"
    build_cache(tiny_work, ImageSpec(size=16), out=out, shard_size=16, workers=1)
    return out


@fuzz_settings(120)
@given(
    name=st.sampled_from(["cache.json", "index.parquet", "shard-00000.status.json"]),
    cut=st.floats(0, 1),
    junk=st.binary(max_size=64),
)
def test_any_damage_to_a_store_file_is_a_cache_error(fuzz_store, tmp_path_factory, name, cut, junk):
    """A store file truncated anywhere, or with junk appended, opens as a CacheError or
    reads the same images; never another exception."""
    folder = tmp_path_factory.mktemp("damaged") / "store"
    shutil.copytree(fuzz_store, folder)
    raw = (folder / name).read_bytes()
    (folder / name).write_bytes(raw[: int(len(raw) * cut)] + junk)
    try:
        cache = ImageCache(folder)
        image = np.zeros((16, 16, 3), np.uint8)
        for image_id in cache.index.index[cache.index["ok"]][:3]:
            cache.read_into(image_id, image)
    except CacheError:
        return
    # what opened must read what the undamaged store reads
    good = ImageCache(fuzz_store)
    for image_id in cache.index.index[cache.index["ok"]][:3]:
        np.testing.assert_array_equal(cache.read(image_id), good.read(image_id))
