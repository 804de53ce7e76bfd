"""A thread pool over piece functions: `--jobs N` pieces at once, one GPU each when GPU ids are given.

Pieces spend their time waiting on containers, so threads are enough; results are handed back to the caller's
thread one by one, which is where they are stored.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
Task = Callable[[str | None], T]  # takes the GPU id it may use (None: no GPU)


def gpu_slots(gpus: str | None, jobs: int) -> list[str | None]:
    """`0,1` gives one piece per GPU; `all` lets every piece see every GPU; none gives no GPU."""
    if not gpus:
        return [None] * jobs
    if gpus == "all":
        return ["all"] * jobs
    return gpus.split(",")


def run_tasks(tasks: Sequence[Task], jobs: int = 1, gpus: str | None = None) -> Iterator[T]:
    """Yields each task's result as it finishes; the first exception stops the rest and is raised."""
    slots = gpu_slots(gpus, jobs)
    free: queue.Queue[str | None] = queue.Queue()
    for slot in slots:
        free.put(slot)
    workers = max(1, min(jobs, len(slots)))

    stopping = threading.Event()  # once set, no piece starts: a run that failed starts nothing new

    def call(task: Task) -> T:
        if stopping.is_set():
            raise CancelledError
        slot = free.get()
        try:
            return task(slot)
        finally:
            free.put(slot)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="piece")
    pending: set[Future] = set()
    remaining = list(tasks)[::-1]
    try:
        while remaining or pending:
            while remaining and len(pending) < workers * 2:
                pending.add(pool.submit(call, remaining.pop()))
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        stopping.set()
        for future in pending:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
