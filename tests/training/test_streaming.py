"""rsna.training.streaming: the tf.data stream gives the generator's samples, each slice
decoded once, in an order that is a pure function of (seed, epoch)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from harness import TINY_CODEC, TINY_SPEC
from rsna.data.augment import Augment
from rsna.data.cache import ImageCache, cache_dir
from rsna.data.folds import read_folds
from rsna.data.metadata import read_prepared_labels
from rsna.training.generator import DataGenerator
from rsna.training.streaming import StreamError, stream_dataset, stream_steps


@pytest.fixture(scope="module")
def data(tiny_work):
    folds = read_folds(tiny_work / "folds.csv")
    return {
        "store": ImageCache(cache_dir(tiny_work, TINY_SPEC, TINY_CODEC)),
        "labels": read_prepared_labels(tiny_work),
        "train": folds.index[folds != 0].tolist(),
    }


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
    with pytest.raises(StreamError, match="`batch_size` and `cycle_length` must be positive"):
        stream_dataset(data["store"], data["train"], data["labels"], batch_size=0)
