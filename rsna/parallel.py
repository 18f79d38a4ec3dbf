"""Process-pool maps with a progress bar, used by every stage that touches many files.

Worker processes are forked on Linux, as Keras forks its own data workers: they never
touch TensorFlow, so a parent that has loaded it is fine, and no ``__main__`` guard is
needed in scripts. Elsewhere they are spawned. Each worker runs OpenCV without its thread pool (``cv2.setNumThreads(0)``), since that
pool can deadlock after a fork and the processes already use every core, and each worker
dies with its parent.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm.auto import tqdm

from rsna.errors import RsnaError

__all__ = [
    "ParallelError",
    "default_workers",
    "parallel_map",
    "progress",
]


class ParallelError(RsnaError):
    """Bad options for a process pool."""


T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it"
) -> Iterable[T]:
    """A tqdm progress bar; ``RSNA_PROGRESS=0`` turns bars off."""
    disable = os.environ.get("RSNA_PROGRESS", "1") == "0"
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, mininterval=0.5)


def _init_worker(parent: int) -> None:
    import cv2

    cv2.setNumThreads(0)  # 0, not 1: after a fork, setNumThreads(1) can hang in OpenCV's pool
    _exit_with_parent(parent)


def _exit_with_parent(parent: int) -> None:
    """Ask Linux to kill this worker when its parent dies.

    Without it, a killed ``rsna preprocess`` leaves its pool workers blocked on their
    task queue forever.
    """
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _context() -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int | None = None,
    desc: str = "",
    unit: str = "file",
    chunksize: int | None = None,
) -> Iterator[R]:
    """Yield ``fn(item)`` for each item, in order, using `workers` processes.

    With one worker, or few items, everything runs in this process. `fn` must be a
    module-level function so it can be sent to a worker. Closing the iterator early
    cancels the items not yet started.
    """
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ParallelError(f"`workers` must be a positive integer. Received: workers={workers!r}")
    n = len(items)
    if workers == 1 or n < 2 * workers:
        yield from progress(map(fn, items), total=n, desc=desc, unit=unit)
        return
    chunksize = chunksize or max(1, min(256, n // (workers * 8)))
    pool = ProcessPoolExecutor(
        workers, mp_context=_context(), initializer=_init_worker, initargs=(os.getpid(),)
    )
    try:
        yield from progress(pool.map(fn, items, chunksize=chunksize), total=n, desc=desc, unit=unit)
    finally:  # a consumer that stops early (an error, a full disk) leaves no queued work
        pool.shutdown(wait=True, cancel_futures=True)
