"""rsna.training.streaming: the tf.data stream gives the generator's samples, each slice
decoded once, in an order that is a pure function of (seed, epoch)."""

from __future__ import annotations

import hashlib
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import TINY_CODEC, TINY_SPEC
from rsna.data.augment import Augment
from rsna.data.cache import CacheError, ImageCache, build_cache, cache_dir
from rsna.data.folds import read_folds
from rsna.data.metadata import read_prepared_labels
from rsna.errors import DataWarning
from rsna.training.generator import DataGenerator
from rsna.training.streaming import StreamError, stream_dataset, stream_memory, stream_steps


@pytest.fixture(scope="module")
def data(tiny_work):
    folds = read_folds(tiny_work / "folds.csv")
    return {
        "store": ImageCache(cache_dir(tiny_work, TINY_SPEC, TINY_CODEC)),
        "labels": read_prepared_labels(tiny_work),
        "train": folds.index[folds != 0].tolist(),
    }


@pytest.fixture(scope="module")
def shardings(tiny_work, tmp_path_factory):
    """The tiny store again with shards of 1 slice (a series a shard) and of every slice."""
    root = tmp_path_factory.mktemp("shardings")
    stores = {}
    for size in (1, 100_000):
        build_cache(tiny_work, TINY_SPEC, codec=TINY_CODEC, out=root / str(size), shard_size=size, workers=1)  # fmt: skip
        stores[size] = ImageCache(root / str(size))
    return stores


def fingerprints(batches) -> list[str]:
    return sorted(
        hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
        for xb, yb in batches
        for x, y in zip(xb, yb, strict=True)
    )


@pytest.mark.parametrize("context", [0, 1])
def test_the_stream_holds_the_generators_samples(data, context):
    stream = stream_dataset(data["store"], data["train"], data["labels"], batch_size=5, context=context)  # fmt: skip
    gen = DataGenerator(data["train"], data["labels"], cache=data["store"], size=32, batch_size=5, context=context)  # fmt: skip
    batches = list(stream.as_numpy_iterator())
    assert len(batches) == stream_steps(len(gen.image_ids), 5)
    assert fingerprints(batches) == fingerprints(gen[i] for i in range(len(gen)))
    assert all(x.dtype == np.uint8 and y.dtype == np.float32 for x, y in batches)


def test_order_and_augmentation_are_a_function_of_seed_and_epoch(data):
    def sums(**options):
        stream = stream_dataset(data["store"], data["train"], data["labels"], batch_size=4, context=1, shuffle=True, augment=Augment(), seed=3, **options)  # fmt: skip
        return [int(x.sum()) for x, _ in stream.as_numpy_iterator()]

    both = sums(epochs=2)
    assert sums(epochs=2) == both  # the same seed, the same sequence
    second = sums(epochs=1, start_epoch=1)
    assert second == both[len(both) - len(second) :]  # a resumed run continues it
    assert second != both[: len(second)]  # and epochs differ


def test_bad_inputs(data):
    with pytest.raises(StreamError, match="1 images are not in"):
        stream_dataset(data["store"], ["ID_nope"], data["labels"], batch_size=4)
    with pytest.raises(StreamError, match="`batch_size` must be a positive integer. Received: batch_size=0"):
        stream_dataset(data["store"], data["train"], data["labels"], batch_size=0)


def test_static_shapes_pad_and_mask_the_last_batch_and_score_the_same(data):
    from rsna.config import config_from_dict
    from rsna.training.fold import compile_fold_model
    from rsna.training.models import build_model

    ids = [i for i in data["train"] if data["store"].readable(i)]
    assert len(ids) % 8 != 0  # a short last batch
    common = dict(batch_size=8, epochs=2)
    plain = stream_dataset(data["store"], ids, data["labels"], **common)
    static = stream_dataset(data["store"], ids, data["labels"], static_shapes=True, **common)
    batches = list(static.as_numpy_iterator())
    assert len(batches) == 2 * stream_steps(len(ids), 8)
    assert {x.shape[0] for x, _, _ in batches} == {8}  # every batch full: static shapes
    assert sum(w.sum() for _, _, w in batches) == 2 * len(ids)  # each real image once an epoch
    last_x, _, last_w = batches[-1]
    real = len(ids) % 8
    assert last_w.tolist() == [1.0] * real + [0.0] * (8 - real) and not last_x[real:].any()
    config = config_from_dict(
        {"image": {"size": TINY_SPEC.size, "context": 0}, "model": {"backbone": "small_cnn", "weights": "random"}}
    )
    model = compile_fold_model(
        build_model(config), learning_rate=1e-3, label_weights=(1, 1, 1, 1, 1, 2)
    )
    steps = stream_steps(len(ids), 8)
    unpadded = model.evaluate(plain, steps=steps, verbose=0, return_dict=True)
    masked = model.evaluate(static, steps=steps, verbose=0, return_dict=True)
    assert abs(unpadded["weighted_log_loss"] - masked["weighted_log_loss"]) <= 1e-6


def test_a_store_at_a_url_streams_the_same_samples(data):
    # TensorFlow's in-memory file system stands in for gs://: the same tf.io.gfile calls.
    import tensorflow as tf

    from rsna.training.streaming import open_store

    local = data["store"].path
    url = "ram://stores/tiny"
    tf.io.gfile.makedirs(url)
    for path in local.iterdir():
        tf.io.gfile.copy(str(path), f"{url}/{path.name}", overwrite=True)
    remote = open_store(url)
    assert remote.remote and str(remote.shard_path(0)) == f"{url}/shard-00000.tfrecord"
    kwargs = dict(batch_size=5, context=1, shuffle=True, seed=3)
    from_url = stream_dataset(url, data["train"], data["labels"], **kwargs)
    from_disk = stream_dataset(local, data["train"], data["labels"], **kwargs)
    for (xa, ya), (xb, yb) in zip(
        from_url.as_numpy_iterator(), from_disk.as_numpy_iterator(), strict=True
    ):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    with pytest.raises(CacheError, match="a remote store is streamed"):
        remote.read(data["train"][0])


def test_a_corrupt_record_names_its_shard_and_image(data, tmp_path):
    """TFRecordDataset's own check said only DataLossError; the stream frames records
    itself, so the error names the shard and the image."""
    import shutil

    import tensorflow as tf

    store = data["store"]
    copy = tmp_path / "store"
    shutil.copytree(store.path, copy)
    index = store.index[store.index["ok"]]
    victim = next(i for i in data["train"] if i in index.index)
    shard, offset = int(index.at[victim, "shard"]), int(index.at[victim, "offset"])
    path = copy / f"shard-{shard:05d}.tfrecord"
    raw = bytearray(path.read_bytes())
    raw[offset + 20] ^= 0xFF  # a byte of the record's data
    path.write_bytes(bytes(raw))
    stream = stream_dataset(ImageCache(copy), data["train"], data["labels"], batch_size=4)
    with pytest.raises(tf.errors.OpError, match=f"shard-{shard:05d}.tfrecord: image {victim}: .*checksum mismatch"):
        list(stream.as_numpy_iterator())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shard_size=st.sampled_from([1, 16, 100_000]),
    block=st.integers(1, 9),
    context=st.integers(0, 2),
    pick=st.integers(0, 2**16),
    shuffle=st.booleans(),
)
def test_each_image_once_an_epoch_with_its_neighbours(data, shardings, shard_size, block, context, pick, shuffle):  # fmt: skip
    """Over shard sizes, block sizes and subsets that cut series anywhere, every epoch holds
    the generator's samples (its neighbours proved by the generator's reference test)."""
    store = data["store"] if shard_size == 16 else shardings[shard_size]
    keep = np.random.default_rng(pick).random(len(data["train"])) < 0.6
    ids = [i for i, k in zip(data["train"], keep, strict=True) if k] or data["train"][:1]
    stream = stream_dataset(store, ids, data["labels"], batch_size=4, context=context, block=block, shuffle=shuffle, seed=pick, epochs=2)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        gen = DataGenerator(ids, data["labels"], cache=store, size=32, batch_size=4, context=context)  # fmt: skip
    batches = list(stream.as_numpy_iterator())
    steps = stream_steps(len(gen.image_ids), 4)
    assert len(batches) == 2 * steps
    expected = fingerprints(gen[i] for i in range(len(gen)))
    assert fingerprints(batches[:steps]) == expected
    assert fingerprints(batches[steps:]) == expected


def test_memory_is_bounded_by_the_pipeline_not_the_shard(data, shardings):
    """One shard of every slice at context 2: the old stream decoded the shard whole.
    NumPy's buffers are traced by tracemalloc; the blocks are what the stream holds."""
    store = shardings[100_000]
    ids = [i for i in data["labels"].index if i in store.index.index and store.readable(i)]
    sample = 32 * 32 * 15
    options = dict(batch_size=4, context=2, block=2, parallel=1, shuffle_buffer=4, prefetch=1)
    stream = stream_dataset(store, ids, data["labels"], shuffle=True, **options)
    tracemalloc.start()
    try:
        n = sum(len(x) for x, _ in stream.as_numpy_iterator())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == len(ids) > 40
    bound = stream_memory(sample, **{k: v for k, v in options.items() if k != "context"})
    assert bound == (2 * 2 + 4 + 2 * 4) * sample
    whole_shard = len(ids) * sample
    assert peak < whole_shard / 3, (peak, whole_shard)
    assert peak < bound, (peak, bound)  # NumPy holds only blocks; the rest is TensorFlow's
