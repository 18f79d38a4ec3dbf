"""rsna.training.generator: every point of the DataGenerator contract."""

from __future__ import annotations

import math
import pickle
import re
import shutil
import warnings

import keras
import numpy as np
import pytest
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

from harness import TINY_CODEC, TINY_SPEC
from rsna.data.augment import Augment, augment
from rsna.data.cache import CacheError, ImageCache, cache_dir
from rsna.data.folds import read_folds
from rsna.data.labels import LABELS
from rsna.data.metadata import read_metadata, read_prepared_labels
from rsna.data.series import neighbours
from rsna.data.views import View, apply_view
from rsna.errors import DataWarning, RsnaError
from rsna.training.generator import (
    DataGenerator,
    EpochSync,
    GeneratorError,
    PaddedBatches,
    SeriesGenerator,
    as_tf_dataset,
    trim,
)


@pytest.fixture(scope="module")
def data(tiny_work):
    meta = read_metadata(tiny_work)
    labels = read_prepared_labels(tiny_work)
    folds = read_folds(tiny_work / "folds.csv")
    readable = meta.index[meta["readable"]]
    return {
        "work": tiny_work,
        "cache": cache_dir(tiny_work, TINY_SPEC, TINY_CODEC),
        "meta": meta,
        "labels": labels,
        "train": [i for i in folds.index[folds != 0] if i in readable],
        "test": meta.index[(meta["split"] == "test") & meta["readable"]].tolist(),
    }


def make(data, ids=None, **kwargs) -> DataGenerator:
    options = {"cache": data["cache"], "size": 32, "batch_size": 7, "seed": 0}
    options.update(kwargs)
    labels = data["labels"] if options.get("to_fit", True) else None
    return DataGenerator(data["train"] if ids is None else ids, labels, **options)


def all_batches(gen: DataGenerator, epoch: int = 0) -> list:
    return [gen.load_batch(i, epoch=epoch) for i in range(len(gen))]


def test_len_and_last_batch_is_exactly_the_remainder(data):
    gen = make(data)
    n = len(data["train"])
    assert len(gen) == math.ceil(n / 7) and n % 7 != 0
    sizes = [x.shape[0] for x, _ in all_batches(gen)]
    assert sizes == [7] * (len(gen) - 1) + [n % 7]
    with pytest.raises(IndexError):
        gen[len(gen)]


def test_to_fit_gives_float32_targets_in_label_order(data):
    gen = make(data)
    x, y = gen[0]
    assert x.dtype == np.uint8 and x.shape == (7, 32, 32, 3)
    assert y.dtype == np.float32 and y.shape == (7, 6)
    np.testing.assert_array_equal(
        y, data["labels"].loc[gen.image_ids[:7], list(LABELS)].to_numpy(np.float32)
    )
    cache = ImageCache(data["cache"])
    np.testing.assert_array_equal(x[3], cache.read(gen.image_ids[3]))
    xf, _ = make(data, dtype="float32")[0]
    assert xf.dtype == np.float32 and np.allclose(xf, x / 255.0)


def test_predict_mode_keeps_the_order_of_image_ids(data):
    ids = list(reversed(data["test"]))
    gen = make(data, ids, to_fit=False, batch_size=5)
    x = np.concatenate(all_batches(gen))
    assert isinstance(gen[0], np.ndarray)  # x alone, not a list
    assert x.shape[0] == len(ids)
    cache = ImageCache(data["cache"])
    for k in (0, 3, len(ids) - 1):
        np.testing.assert_array_equal(x[k], cache.read(ids[k]))


def test_shuffle_gives_a_new_order_every_epoch_and_the_same_sequence_per_seed(data):
    gen = make(data, shuffle=True)
    orders = [gen.order(e) for e in range(3)]
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    assert all(sorted(o) == list(range(len(gen.image_ids))) for o in orders)
    again = make(data, shuffle=True)
    assert all(np.array_equal(again.order(e), orders[e]) for e in range(3))
    assert not np.array_equal(make(data, shuffle=True, seed=1).order(0), orders[0])
    first = gen[0][1]
    gen.on_epoch_end()
    assert gen.epoch == 1 and not np.array_equal(gen[0][1], first)
    np.testing.assert_array_equal(make(data, shuffle=False).order(5), np.arange(len(gen.image_ids)))


def test_augmentation_only_when_asked_seeded_by_epoch_and_index(data):
    plain = make(data)
    aug = make(data, augment=True)
    assert np.array_equal(plain[0][0], make(data, augment=None)[0][0])
    a0 = aug.load_batch(0, epoch=0)[0]
    assert not np.array_equal(a0, plain[0][0])
    np.testing.assert_array_equal(a0, make(data, augment=True).load_batch(0, epoch=0)[0])
    assert not np.array_equal(a0, aug.load_batch(0, epoch=1)[0])
    assert not np.array_equal(a0[:2], aug.load_batch(1, epoch=0)[0][:2])


def test_context_stacks_neighbours_by_z_and_repeats_the_edges(data):
    meta = data["meta"]
    series = meta[meta["readable"] & (meta["split"] == "test")].groupby("series_uid")
    uid, rows = next((u, r) for u, r in series if len(r) == r["series_length"].iloc[0])
    rows = rows.sort_values("slice_index")
    ids = rows.index.tolist()
    gen = make(data, ids, to_fit=False, context=1, batch_size=len(ids))
    x = gen[0]
    assert x.shape == (len(ids), 32, 32, 9) and gen.channels == 9
    cache = ImageCache(data["cache"])
    images = [cache.read(i) for i in ids]
    np.testing.assert_array_equal(x[2], np.concatenate([images[1], images[2], images[3]], axis=-1))
    np.testing.assert_array_equal(x[0], np.concatenate([images[0], images[0], images[1]], axis=-1))
    np.testing.assert_array_equal(
        x[-1], np.concatenate([images[-2], images[-1], images[-1]], axis=-1)
    )


def reference_batch(gen: DataGenerator, data, index: int, epoch: int) -> np.ndarray:
    """Batch `index` as the contract says, slice by slice: each context slice read alone
    (an unreadable neighbour replaced by the centre), concatenated along the channels,
    then augmented with the batch's generator (seed, epoch, index) row after row."""
    rows = gen.order(epoch)[index * gen.batch_size : (index + 1) * gen.batch_size]
    centres = [gen.image_ids[int(r)] for r in rows]
    around = neighbours(data["meta"], centres, context=gen.context)
    readable = data["meta"]["readable"]
    rng = np.random.default_rng([gen.seed, epoch, index]) if gen.augment else None
    samples = []
    for centre, ids in zip(centres, around, strict=True):
        parts = [gen.images.read(i if readable[i] else centre) for i in ids]
        x = np.concatenate(parts, axis=-1)
        samples.append(x if rng is None else augment(x, rng, gen.augment, windows=3))
    return np.stack(samples)


@pytest.mark.parametrize("context", [0, 1, 2])
@pytest.mark.parametrize("warp", [False, True])
def test_batches_equal_the_slice_by_slice_reference(data, context, warp):
    gen = make(data, context=context, shuffle=True, augment=Augment() if warp else None)
    for epoch, index in [(0, 0), (1, 2), (0, len(gen) - 1)]:
        x, _ = gen.load_batch(index, epoch=epoch)
        np.testing.assert_array_equal(x, reference_batch(gen, data, index, epoch))


@pytest.mark.parametrize("context", [0, 1])
def test_head_crops_from_dicoms_equal_the_reference(data, context):
    gen = make(data, cache=None, work_dir=data["work"], crop="head", context=context, augment=True)
    x, _ = gen.load_batch(1, epoch=0)
    assert x.shape[-1] == 3 * (2 * context + 1)
    np.testing.assert_array_equal(x, reference_batch(gen, data, 1, 0))


def test_unreadable_images_are_skipped_in_training_and_zeros_in_prediction(data, tiny_competition):
    corrupt_train = tiny_competition.manifest["corrupt"]["train"][0]
    corrupt_test = tiny_competition.manifest["corrupt"]["test"][0]
    with pytest.warns(
        DataWarning, match=f"training skips 1 unreadable images, e.g. {corrupt_train}"
    ):
        gen = make(data, [*data["train"][:5], corrupt_train])
    assert gen.skipped == [corrupt_train] and corrupt_train not in gen.image_ids
    assert gen[0][0].shape[0] == 5
    with pytest.warns(DataWarning, match=f"predicting 1 unreadable images from zeros .* e.g. {corrupt_test}: truncated"):  # fmt: skip
        pred = make(data, [data["test"][0], corrupt_test], to_fit=False)
    assert pred.unreadable == [corrupt_test]
    x = pred[0]
    assert x.shape[0] == 2 and not x[1].any() and x[0].any()


def test_a_read_that_fails_later_drops_the_row_or_gives_zeros(data, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(data["work"], work, ignore=shutil.ignore_patterns("cache"))
    data_dir = tmp_path / "data"
    (tmp_path / "data").mkdir()
    import json

    manifest = json.loads((work / "prepare.json").read_text())
    shutil.copytree(manifest["data_dir"], data_dir, dirs_exist_ok=True)
    manifest["data_dir"] = str(data_dir)
    (work / "prepare.json").write_text(json.dumps(manifest))
    victim = data["train"][1]
    path = data_dir / data["meta"].at[victim, "file"]
    path.write_bytes(path.read_bytes()[:200])  # broken after prepare ran
    gen = DataGenerator(data["train"][:4], data["labels"], work_dir=work, size=32, batch_size=4)
    with pytest.warns(DataWarning, match=f"skipping {victim} in training"):
        x, y = gen[0]
    assert x.shape[0] == 3 and y.shape == (3, 6) and gen.failed == [victim]
    np.testing.assert_array_equal(
        y, data["labels"].loc[[i for i in data["train"][:4] if i != victim]].to_numpy(np.float32)
    )
    pred = DataGenerator(data["train"][:4], work_dir=work, size=32, batch_size=4, to_fit=False)
    with pytest.warns(DataWarning, match=f"predicting {victim} from zeros"):
        x = pred[0]
    assert x.shape[0] == 4 and not x[1].any() and pred.unreadable == [victim]
    pred[0]  # read again: still listed once
    assert pred.unreadable == [victim]
    # what forked worker processes find reaches the parent, once per image
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    for to_fit, listed in ((False, "unreadable"), (True, "failed")):
        labels = data["labels"] if to_fit else None
        gen = DataGenerator(data["train"][:8], labels, work_dir=work, size=32, batch_size=1, to_fit=to_fit, workers=2, use_multiprocessing=True)  # fmt: skip
        adapter = PyDatasetAdapter(gen, shuffle=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            for _ in range(2):  # two epochs: every image read twice
                adapter.on_epoch_begin()
                list(adapter.get_numpy_iterator())
                adapter.on_epoch_end()
        assert getattr(gen, listed) == [victim], listed


def test_pickles_and_gives_the_same_batches(data):
    gen = make(data, shuffle=True, augment=True, context=1)
    gen.set_epoch(2)
    back = pickle.loads(pickle.dumps(gen))
    for i in (0, len(gen) - 1):
        a, b = gen[i], back[i]
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.slow
@pytest.mark.parametrize("source", ["cache", "work_dir"])
def test_worker_processes_give_the_samples_of_the_main_process(data, source):
    """Processes (DICOMs) or threads (a store): the same batches as the main process."""
    if source == "work_dir":
        data = {**data, "cache": None}
    reference = make(
        data,
        shuffle=True,
        augment=True,
        context=1,
        **({"work_dir": data["work"]} if source == "work_dir" else {}),
    )
    expected = all_batches(reference, epoch=0) + all_batches(reference, epoch=1)
    gen = make(data, shuffle=True, augment=True, context=1, workers=2, use_multiprocessing=True, **({"work_dir": data["work"]} if source == "work_dir" else {}))  # fmt: skip
    adapter = PyDatasetAdapter(gen, shuffle=False)
    got = []
    for _ in range(2):
        adapter.on_epoch_begin()
        got.extend(adapter.get_numpy_iterator())
        adapter.on_epoch_end()
    assert len(got) == len(expected)
    for (xa, ya), (xb, yb) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_dicom_source_equals_cache_source(data):
    from_cache = make(data, shuffle=True, context=1)
    from_dicom = make(data, shuffle=True, context=1, cache=None, work_dir=data["work"])
    for i in (0, 2):
        np.testing.assert_array_equal(from_cache[i][0], from_dicom[i][0])


def test_tf_dataset_gives_the_same_batches(data):
    gen = make(data, shuffle=True, augment=True)
    dataset = as_tf_dataset(gen, epochs=2)
    batches = [(x.numpy(), y.numpy()) for x, y in dataset]
    expected = all_batches(gen, 0) + all_batches(gen, 1)
    assert len(batches) == 2 * len(gen)
    for (xa, ya), (xb, yb) in zip(batches, expected, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    pred = as_tf_dataset(make(data, data["test"], to_fit=False))
    np.testing.assert_array_equal(
        next(iter(pred)).numpy(), make(data, data["test"], to_fit=False)[0]
    )


def test_epoch_sync_sets_the_epoch_for_a_resumed_run(data):
    gen = make(data, shuffle=True)
    EpochSync(gen).on_epoch_begin(4)
    np.testing.assert_array_equal(gen[0][1], gen.load_batch(0, epoch=4)[1])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"batch_size": 0},
            GeneratorError,
            "`batch_size` must be a positive integer. Received: batch_size=0",
        ),
        ({"dtype": "float16"}, GeneratorError, "`dtype` must be 'uint8' or 'float32'"),
        ({"size": 64}, CacheError, "holds images made with size=32.*asked for size=64"),
        ({"cache": None}, GeneratorError, "pass `work_dir`"),
        ({"context": -1}, ValueError, "`context` must be a non-negative integer"),
    ],
)
def test_bad_options(data, kwargs, error, message):
    with pytest.raises(error, match=message):
        make(data, **kwargs)


def test_bad_ids_and_labels(data):
    with pytest.raises(GeneratorError, match="1 image IDs are not in the source, e.g. 'ID_nope'"):
        make(data, [data["train"][0], "ID_nope"])
    with pytest.raises(GeneratorError, match="`image_ids` is empty"):
        make(data, [])
    with pytest.raises(GeneratorError, match="`labels` is required when to_fit=True"):
        DataGenerator(data["train"], None, cache=data["cache"], size=32)
    with pytest.raises(GeneratorError, match="have no labels"):
        DataGenerator(data["test"][:3], data["labels"], cache=data["cache"], size=32)


@pytest.mark.slow
def test_worker_processes_send_batches_through_shared_memory(data):
    """A worker's batch travels as its ring slot's number, not as pickled pixels, and
    arrives as a view of the slot; while anything holds it, no worker writes there."""
    import gc
    import multiprocessing
    import pickle

    from keras.src.trainers.data_adapters import py_dataset_adapter

    # batches of 1, so that there are batches enough for a slot to come round
    gen = make(data, batch_size=1, shuffle=True, context=1, workers=2, use_multiprocessing=True, cache=None, work_dir=data["work"])  # fmt: skip
    ring = gen._ring  # noqa: SLF001 - the ring is what this test is about
    assert ring is not None and len(gen) > 2 + ring.slots
    expected_x, expected_y = gen.load_batch(2, epoch=0)
    with multiprocessing.get_context("fork").Pool(
        1, initializer=py_dataset_adapter.init_pool_generator, initargs=({7: gen},)
    ) as pool:
        x, y = pool.apply(py_dataset_adapter.get_index, (7, 2))
        np.testing.assert_array_equal(x, expected_x)
        np.testing.assert_array_equal(y, expected_y)
        assert np.shares_memory(x, ring.array)  # no copy
        slot = 2 % ring.slots
        assert ring.leases[slot] == 1
        kept = x[1:3]  # a slice of the batch keeps the lease too
        again = 2 + ring.slots  # the next batch for this slot, while it is leased
        x2, _ = pool.apply(py_dataset_adapter.get_index, (7, again))
        assert not np.shares_memory(x2, ring.array)  # it travelled pickled instead
        np.testing.assert_array_equal(kept, expected_x[1:3])  # and the held batch is intact
        del x, kept
        gc.collect()
        assert ring.leases[slot] == 0  # released with the last array that used it
        x3, _ = pool.apply(py_dataset_adapter.get_index, (7, again))
        assert np.shares_memory(x3, ring.array)
    view = ring.slot(5, len(expected_x))
    assert len(pickle.dumps(view)) < 1000 < expected_x.nbytes  # what crosses the pipe
    assert make(data, workers=2, use_multiprocessing=False)._ring is None  # noqa: SLF001 - threads
    store = make(data, workers=2, use_multiprocessing=True)  # a store's decoders release the GIL
    assert not store.use_multiprocessing and store._ring is None  # noqa: SLF001 - threads


def test_a_plain_folder_of_dicoms_needs_nothing_prepared(data, tiny_competition):
    """The seed-style call: image IDs, the wide labels, and the folder."""
    folder = tiny_competition.root / "stage_2_train"
    ids = data["train"][:20]
    for context in (0, 1):
        seed_style = DataGenerator(ids, data["labels"], image_dir=folder, size=32, batch_size=7, context=context)  # fmt: skip
        prepared = make(data, ids, cache=None, work_dir=data["work"], context=context)
        for index in range(len(seed_style)):
            xa, ya = seed_style[index]
            xb, yb = prepared[index]
            np.testing.assert_array_equal(xa, xb)  # neighbours found by the folder's headers
            np.testing.assert_array_equal(ya, yb)
    with pytest.raises(RsnaError, match="must be a folder"):
        DataGenerator(ids, data["labels"], image_dir=folder / "nope", size=32)


@pytest.mark.slow
def test_an_unbounded_queue_never_gets_another_batchs_pixels(data):
    """max_queue_size=0 is an unbounded queue to Keras: workers run far ahead of the ring.
    Every batch of every epoch still equals the one-process batch, bit for bit."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    options = dict(batch_size=1, shuffle=True, context=1, cache=None, work_dir=data["work"])
    gen = make(data, workers=2, use_multiprocessing=True, max_queue_size=0, **options)
    assert gen._ring is not None and len(gen) > 2 * gen._ring.slots  # noqa: SLF001 - slots wrap
    alone = make(data, **options)
    adapter = PyDatasetAdapter(gen, shuffle=False)
    for epoch in range(3):
        gen.set_epoch(epoch)
        adapter.on_epoch_begin()
        got = [np.array(x) for x, _ in adapter.get_numpy_iterator()]
        adapter.on_epoch_end()
        assert len(got) == len(alone)
        for index, x in enumerate(got):
            np.testing.assert_array_equal(x, alone.load_batch(index, epoch=epoch)[0], err_msg=f"epoch {epoch}, batch {index}")  # fmt: skip


def test_fewer_steps_than_the_generator_are_refused_with_epoch_sync(data):
    """The seeds' `steps_per_epoch=len(x) // batch_size` habit: Keras then keeps one
    iterator across epochs and runs out of data; EpochSync refuses it at the start."""
    import keras

    gen = make(data, batch_size=8)
    inputs = keras.Input(gen.sample_shape)
    model = keras.Model(inputs, keras.layers.Dense(6)(keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))))  # fmt: skip
    model.compile(loss="binary_crossentropy")
    with pytest.raises(GeneratorError, match=f"`steps_per_epoch` must be len\\(generator\\)={len(gen)}"):
        model.fit(gen, epochs=2, steps_per_epoch=len(gen) - 1, shuffle=False, verbose=0, callbacks=[EpochSync(gen)])  # fmt: skip
    model.fit(gen, epochs=1, steps_per_epoch=len(gen), shuffle=False, verbose=0, callbacks=[EpochSync(gen)])  # fmt: skip


@pytest.mark.parametrize("workers", [0, 2])
def test_fewer_steps_than_the_generator_are_refused_without_epoch_sync(data, workers):
    """Without EpochSync the generator refuses an epoch Keras ends early, at its end. Its
    workers may read every batch ahead, so with workers Keras's own "ran out of data"
    warning may come first: never a silent run. `len(gen)` steps, or none, train."""
    import keras

    options = {"workers": workers} if workers else {}
    gen = make(data, batch_size=2, **options)
    inputs = keras.Input(gen.sample_shape)
    model = keras.Model(inputs, keras.layers.Dense(6)(keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))))  # fmt: skip
    model.compile(loss="binary_crossentropy")
    refused = f"after \\d+ of this generator's {len(gen)} batches: `steps_per_epoch`"
    if not workers:
        with pytest.raises(GeneratorError, match=refused):
            model.fit(gen, epochs=4, steps_per_epoch=2, shuffle=False, verbose=0)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model.fit(gen, epochs=4, steps_per_epoch=2, shuffle=False, verbose=0)
                said = any("ran out of data" in str(w.message) for w in caught)
            except GeneratorError as exc:
                said = re.search(refused, str(exc)) is not None
        assert said, "neither the generator nor Keras said the epochs were short"
    history = model.fit(make(data, batch_size=2, **options), epochs=2, steps_per_epoch=len(gen), shuffle=False, verbose=0)  # fmt: skip
    assert len(history.history["loss"]) == 2
    model.fit(make(data, batch_size=2, **options), epochs=2, shuffle=False, verbose=0)


def test_the_seeds_spelling_is_accepted(data, tiny_competition):
    """The popular Keras kernels call DataGenerator(list_IDs, labels, batch_size=32,
    img_size=(512, 512), img_dir=...): the same batches as rsna's own names."""
    folder = tiny_competition.root / "stage_2_train"
    ids = data["train"][:10]
    ours = DataGenerator(ids, data["labels"], image_dir=folder, size=32, batch_size=4)
    seeds = DataGenerator(list_IDs=ids, labels=data["labels"], batch_size=4, img_size=(32, 32), img_dir=folder)  # fmt: skip
    for index in range(len(ours)):
        np.testing.assert_array_equal(ours[index][0], seeds[index][0])
    assert DataGenerator(ids, data["labels"], img_size=32, img_dir=folder).spec.size == 32
    with pytest.raises(GeneratorError, match="`img_size` must be square.*Received: img_size=\\(32, 16\\)"):
        DataGenerator(ids, data["labels"], img_size=(32, 16), img_dir=folder)
    with pytest.raises(GeneratorError, match="give `image_dir` or its alias `img_dir`, not both"):
        DataGenerator(ids, data["labels"], image_dir=folder, img_dir=folder, size=32)
    with pytest.raises(GeneratorError, match="`image_ids` \\(or `list_IDs`\\) is required"):
        DataGenerator(labels=data["labels"], image_dir=folder)


def test_context_slices_are_read_once_per_batch_and_across_batches(data):
    meta = data["meta"]
    test = meta[meta["readable"] & (meta["split"] == "test")].sort_values(["series_uid", "slice_index"])  # fmt: skip
    ids = test.index.tolist()
    gen = make(data, ids, to_fit=False, context=1, batch_size=8)
    for index in range(len(gen)):
        gen[index]
    assert gen.decodes == len(ids)  # in series order every slice is read exactly once
    shuffled = make(data, ids, to_fit=False, context=1, batch_size=len(ids))
    shuffled[0]
    assert shuffled.decodes == len(ids)  # within a batch: 3 uses of each slice, 1 read


def test_padded_batches_pad_only_the_last_and_trim_restores_the_rows():
    class Batches(keras.utils.PyDataset):
        def __init__(self, sizes):
            super().__init__()
            self.sizes = sizes

        def __len__(self):
            return len(self.sizes)

        def __getitem__(self, i):
            start = sum(self.sizes[:i])
            return np.arange(start, start + self.sizes[i])[:, None].astype("float32")

    padded = PaddedBatches(Batches([4, 4, 1]), rows=4)
    assert padded[2].ravel().tolist() == [8, 8, 8, 8]  # the last row repeated
    rows = np.concatenate([padded[i] for i in range(len(padded))])
    assert trim(rows, 9).ravel().tolist() == list(range(9))
    assert [a.ravel().tolist() for a in trim([rows, rows * 2], 2)] == [[0, 1], [0, 2]]
    with pytest.raises(GeneratorError, match="only the last may hold fewer than rows=4"):
        PaddedBatches(Batches([4, 3, 4]), rows=4)[1]


def test_series_batches_keep_one_shape_through_keras_tf_dataset():
    """Keras fixes a PyDataset's shapes from its first batches: series of unequal
    length (the longest last) must still batch to one shape, their padding masked."""
    lengths = [5, 5, 6, 6, 9]
    series = {
        f"S{k}": ([f"ID_{k}_{j}" for j in range(n)], np.full((n, 4), k + 1.0, np.float32))
        for k, n in enumerate(lengths)
    }
    gen = SeriesGenerator(series, batch_size=2)
    adapter = PyDatasetAdapter(gen, shuffle=False)
    shapes = [tuple(b["slices"].shape) for b in adapter.get_tf_dataset()]
    assert shapes == [(2, 9, 4), (2, 9, 4), (1, 9, 4)]
    batch = gen[0]
    assert batch["mask"].sum(axis=1).tolist() == [5.0, 5.0]
    assert not batch["slices"][:, 5:].any()


@pytest.mark.parametrize("view", ["hflip", "transpose", "centre_crop", View("random_crop", 3)])
def test_a_view_is_applied_to_the_batch_the_generator_reads(data, view):
    plain = make(data, data["test"], to_fit=False)
    seen = make(data, data["test"], to_fit=False, view=view)
    want = view if isinstance(view, View) else View(view)
    for i in range(len(plain)):
        np.testing.assert_array_equal(
            seen.load_batch(i, epoch=0), apply_view(plain.load_batch(i, epoch=0), want, seed=0)
        )
    np.testing.assert_array_equal(
        make(data, data["test"], to_fit=False, hflip=True).load_batch(0, epoch=0),
        make(data, data["test"], to_fit=False, view="hflip").load_batch(0, epoch=0),
    )
    with pytest.raises(GeneratorError, match="`view` must be one view"):
        make(data, data["test"], to_fit=False, view="random_crop:2")
    with pytest.raises(GeneratorError, match="disagree"):
        make(data, data["test"], to_fit=False, view="vflip", hflip=True)


def test_neighbour_channels_are_the_three_slices_in_one_window(data):
    """``image.channels = "neighbours"``: channel j of slice s is the window of slice
    s - 1 + j (the edge slice repeating), read from the DICOMs."""
    from rsna.config import config_from_dict

    config = config_from_dict(
        {
            "data": {"work_dir": str(data["work"]), "cache": False},
            "image": {"size": 32, "windows": "brain", "context": 1, "channels": "neighbours"},
            "model": {"backbone": "small_cnn"},
        }
    )
    ids = data["test"][:6]
    three = DataGenerator.from_config(config, ids, batch_size=6, to_fit=False)
    x = three.load_batch(0, epoch=0)
    assert x.shape == (6, 32, 32, 3)
    table = neighbours(data["meta"], ids, context=1)
    alone = DataGenerator(
        list(table.ravel()), None, work_dir=data["work"], size=32,
        windows=config.image.windows, batch_size=len(table.ravel()), to_fit=False,
    ).load_batch(0, epoch=0)  # fmt: skip
    np.testing.assert_array_equal(x, alone[..., 0].reshape(6, 3, 32, 32).transpose(0, 2, 3, 1))


def test_study_sampling_makes_shorter_epochs_of_the_drawn_slices(data):
    from rsna.data.series import study_epoch_size, study_sample

    gen = make(data, shuffle=True, sampling=(2, 1.0))
    slices = gen.images.slices
    size = study_epoch_size(slices, gen.image_ids, per_study=2)
    assert len(gen) == math.ceil(size / 7) and size < len(gen.image_ids)
    for epoch in (0, 1):
        seen = np.concatenate([y for _, y in all_batches(gen, epoch=epoch)])
        rows = study_sample(slices, gen.image_ids, per_study=2, centre=1.0, seed=0, epoch=epoch)
        assert sorted(gen.order(epoch)) == list(rows)
        np.testing.assert_array_equal(np.sort(seen, axis=0), np.sort(gen._targets[rows], axis=0))
    assert sorted(gen.order(0)) != sorted(gen.order(1))  # another draw each epoch
    every = make(data, shuffle=True)
    assert len(every) == math.ceil(len(every.image_ids) / 7)
    with pytest.raises(RsnaError, match="`per_study` must be a positive integer"):
        make(data, sampling=(0, 1.0))
