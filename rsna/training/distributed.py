"""Training across workers on ``tf.distribute.MultiWorkerMirroredStrategy``, and the
static-shape batches that strategy and TPUs take.

* :func:`multi_worker_strategy`: TensorFlow's strategy from ``TF_CONFIG``, with a
  ``reduce`` that accepts what Keras 3's ``fit`` hands it (below).
* :func:`worker_role`: which worker this process is, and whether it writes the outputs.
* :func:`agree`: every worker checks that all of them start the same fold at the same
  epoch with the same images, before the first step.
* :func:`replica_batches`: each worker reads only its own share of every global batch
  (:meth:`~rsna.training.generator.DataGenerator.load_part`), in static shapes with
  zero-weight padding, so an epoch covers every training image exactly once across the
  workers and every worker runs the same number of steps.

Keras 3.15 calls ``strategy.reduce("MEAN", (x, y, w))`` on the first batch and
``strategy.reduce("MEAN", scalar, axis=0)`` on the metrics. ``MirroredStrategy`` maps
the first over the structure; ``MultiWorkerMirroredStrategy`` does neither, and fails
(keras-team/keras#20585, tensorflow/tensorflow#72388). :class:`CollectiveStrategy` is
TensorFlow's strategy with only that reduce widened: each leaf is reduced on its own,
a scalar over the replicas. Everything else is TensorFlow's.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from rsna.data.labels import LABELS
from rsna.errors import RsnaError
from rsna.training.generator import DataGenerator

__all__ = [
    "CollectiveStrategy",
    "DistributedError",
    "SyncMovingStatistics",
    "WorkerRole",
    "agree",
    "multi_worker_strategy",
    "replica_batches",
    "static_batches",
    "worker_role",
]


class DistributedError(RsnaError):
    """The workers disagree, or one of them was lost.

    The CLI exits at once after reporting it: destroying a distributed iterator whose
    prefetch thread waits in the loader for the GIL would deadlock the process.
    """

    exit_now = True


#: The dtypes TensorFlow's collective ops reduce.
_COLLECTIVE_TYPES = (tf.bfloat16, tf.float16, tf.float32, tf.float64, tf.int32, tf.int64)


class CollectiveStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` takes a nested structure, a scalar
    with an axis, and uint8 values, as Keras 3's ``fit`` passes them (the module's note)."""

    def reduce(self, reduce_op, value, axis=None):
        parent = super()

        def one(leaf):
            first = leaf.values[0] if isinstance(leaf, tf.distribute.DistributedValues) else leaf
            rank = getattr(getattr(first, "shape", None), "rank", None)
            dtype = getattr(first, "dtype", tf.float32)
            if dtype in _COLLECTIVE_TYPES:
                return parent.reduce(reduce_op, leaf, axis=None if rank == 0 else axis)
            # Collectives take no uint8; Keras reduces the first (uint8) image batch.
            wide = self.run(lambda t: tf.cast(t, tf.float32), args=(leaf,))
            return tf.cast(parent.reduce(reduce_op, wide, axis=axis), dtype)

        return tf.nest.map_structure(one, value)


def multi_worker_strategy(*, timeout: float | None = None) -> CollectiveStrategy:
    """The strategy of ``TF_CONFIG``'s cluster; it waits until every worker has joined.

    Create it before anything else starts TensorFlow's runtime (TensorFlow's rule).
    `timeout`: seconds a collective may wait (None: no limit).
    """
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    return CollectiveStrategy(communication_options=options)


@dataclass(frozen=True)
class WorkerRole:
    """This process among the strategy's workers: `rank` 0 is the chief."""

    rank: int = 0
    workers: int = 1

    @property
    def chief(self) -> bool:
        return self.rank == 0

    def describe(self, strategy) -> str:
        name = type(strategy).__name__
        if isinstance(strategy, CollectiveStrategy):
            name = "MultiWorkerMirroredStrategy"
        text = f"{name}: {strategy.num_replicas_in_sync} replica(s) on {self.workers} worker(s)"
        if self.workers > 1:
            text += f"; this is worker {self.rank}{' (chief)' if self.chief else ''}"
        return text


def worker_role(strategy) -> WorkerRole:
    """The role of this process under `strategy` (the only worker when not multi-worker)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return WorkerRole()
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    chiefs = len(spec.get("chief", []))
    workers = chiefs + len(spec.get("worker", []))
    rank = resolver.task_id if resolver.task_type == "chief" else resolver.task_id + chiefs
    return WorkerRole(rank=rank, workers=workers)


def agree(strategy, **values: int) -> None:
    """Check that every worker holds the same `values` (a collective: all must call it).

    Raises:
        DistributedError: naming the first value that differs and each worker's.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    mine = tf.constant([list(values.values())], tf.int64)
    local = strategy.experimental_distribute_values_from_function(lambda _: mine)
    table = strategy.gather(local, axis=0).numpy()
    for column, name in enumerate(values):
        seen = table[:, column]
        if (seen != seen[0]).any():
            raise DistributedError(
                f"the workers disagree on `{name}`: {seen.tolist()} (by replica). Every "
                "worker must run the same command on the same data and see the run "
                "folder at the same path (one machine, or a shared file system)"
            )


class SyncMovingStatistics(keras.callbacks.Callback):
    """Average the float non-trainable variables (batch norm's moving mean and variance)
    over every replica before each validation and at the end of training.

    Keras 3 updates them on each replica from its own share of the batch and never
    reconciles them (``add_weight`` defaults to ``aggregation="none"``; tf.keras read
    them as the mean): the replicas drift apart, validation mixes several models, and
    the saved model holds the first replica's. Measured in ``tests/training/
    test_distributed.py``. The mean of the replicas' moving averages is the moving
    average of their batch means, as tf.keras gave.
    """

    def __init__(self, strategy) -> None:
        super().__init__()
        self.strategy = strategy
        self._sync = None

    def _variables(self) -> list:
        return [
            v.value
            for v in self.model.non_trainable_variables
            if "float" in str(v.dtype) and not v.path.endswith("seed_generator_state")
        ]

    def synchronize(self) -> None:
        if self._sync is None:
            variables = self._variables()

            def step():
                context = tf.distribute.get_replica_context()
                means = context.all_reduce("MEAN", [tf.identity(v) for v in variables])
                for variable, mean in zip(variables, means, strict=True):
                    variable.assign(mean)

            self._sync = tf.function(lambda: self.strategy.run(step))
        self._sync()

    def on_test_begin(self, logs: dict | None = None) -> None:
        self.synchronize()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.synchronize()


def static_batches(strategy) -> bool:
    """Whether training under `strategy` feeds :func:`replica_batches`: with several
    replicas (each reads its share; a short last batch would leave some replicas none,
    which batch norm cannot take) or on a TPU (static shapes)."""
    return strategy.num_replicas_in_sync > 1 or isinstance(strategy, tf.distribute.TPUStrategy)


def replica_batches(
    strategy,
    generator: DataGenerator,
    *,
    start_epoch: int = 0,
    parallel: int | None = None,
):
    """An endless distributed dataset of `generator`'s batches from `start_epoch` on: each
    replica gets its part of every global batch (``batch_size // replicas`` rows, weights
    0 on padding). Fit it with ``steps_per_epoch=len(generator)``; the epoch of each
    batch follows from its position, so a resumed fit must start at `start_epoch`.

    Raises:
        DistributedError: the global batch size does not split evenly over the replicas.
    """
    replicas = strategy.num_replicas_in_sync
    if generator.batch_size % replicas:
        raise DistributedError(
            f"`train.batch_size` is global and must be a multiple of the {replicas} "
            f"replicas. Received: batch_size={generator.batch_size}"
        )
    share, steps = generator.batch_size // replicas, len(generator)
    x_type = tf.uint8 if generator.dtype == "uint8" else tf.float32
    shapes = ((share, *generator.sample_shape), (share, len(LABELS)), (share,))

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local

        def load(position):
            epoch, rest = divmod(int(position), steps * local)
            index, j = divmod(rest, local)
            return generator.load_part(index, part=first + j, parts=replicas, epoch=epoch)

        def fetch(position):
            out = tf.numpy_function(load, [position], (x_type, tf.float32, tf.float32))
            return tuple(tf.ensure_shape(t, s) for t, s in zip(out, shapes, strict=True))

        positions = tf.data.Dataset.counter(start_epoch * steps * local)
        batches = positions.map(
            fetch, num_parallel_calls=parallel or tf.data.AUTOTUNE, deterministic=True
        )
        return batches.prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)
