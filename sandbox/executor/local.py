"""A thread pool over piece functions: `--jobs N` CPU pieces at once, plus one GPU piece per GPU id given.

Pieces spend their time waiting on containers, so threads are enough; results are handed back to the caller's
thread one by one, which is where they are stored.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Generic, TypeVar

from sandbox.errors import SandboxError
from sandbox.executor.base import Messages, PieceRequest, Task, split_lanes

T = TypeVar("T")


def gpu_slots(gpus: str | None, jobs: int) -> list[str | None]:
    """`0,1` gives one piece per GPU; `all` lets every piece see every GPU; none gives no GPU."""
    if not gpus:
        return [None] * jobs
    if gpus == "all":
        return ["all"] * jobs
    ids: list[str | None] = [gpu.strip() for gpu in gpus.split(",")]
    if not all(ids) or len(set(ids)) != len(ids):
        raise SandboxError(f"gpus '{gpus}'", "not a list of distinct GPU ids", "use 'all' or ids like 0,1")
    return ids


class _NotStarted(Exception):
    """A task skipped because the run is stopping; never reaches the caller."""


class _Lane(Generic[T]):
    """One kind of work (GPU or CPU): its own threads, the slots they hand out, its tasks not started yet."""

    def __init__(self, slots: list[str | None], name: str, tasks: list[Task[T]], stopping: threading.Event) -> None:
        self.workers = max(1, len(slots))
        self.free: queue.Queue[str | None] = queue.Queue()
        for slot in slots or [None]:
            self.free.put(slot)
        self.todo = tasks[::-1]
        self.pending: set[Future[T]] = set()
        self.stopping = stopping
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=name)

    def fill(self) -> None:
        """Queues up to two tasks per worker, so a worker never waits for the caller to store a result."""
        while self.todo and len(self.pending) < self.workers * 2 and not self.stopping.is_set():
            self.pending.add(self.pool.submit(self._call, self.todo.pop()))

    def _call(self, task: Task[T]) -> T:
        if self.stopping.is_set():
            raise _NotStarted
        slot = self.free.get()  # never waits: there are as many slots as workers
        try:
            return task(slot)
        except BaseException:
            self.stopping.set()  # a failed run starts nothing new, in any lane
            raise
        finally:
            self.free.put(slot)

    def close(self) -> None:
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)


def run_tasks(
    tasks: Sequence[Task[T]],
    jobs: int = 1,
    gpus: str | None = None,
    wants_gpu: Sequence[bool] | None = None,
) -> Iterator[T]:
    """Yields each task's result as it finishes; the first exception stops the rest and is raised.

    `wants_gpu[i]` says whether task i runs on a GPU (None: every task does). Without `gpus` every task is a CPU
    task and gets None: at most `jobs` at once. With `gpus`, GPU tasks and CPU tasks run in separate lanes, so
    neither waits for the other:
    - GPU tasks: `0,1` runs at most one task per GPU id, each called with one free id ("0"); `all` runs up to
      `jobs` at once, each called with "all";
    - CPU tasks: at most `jobs` at once, called with None, next to the GPU tasks (a GPU machine's cores keep
      working), so up to `jobs` + the number of GPU ids pieces run at once (`2 * jobs` with `all`).
    GPU workers are the threads `piece_gpu_N`, CPU workers `piece_N` (the worker names in the timeline).
    """
    gpu_tasks, cpu_tasks = split_lanes(tasks, gpus, wants_gpu)
    stopping = threading.Event()  # once set, no piece starts: a run that failed starts nothing new
    lanes = [
        _Lane(gpu_slots(gpus, jobs) if gpus else [], "piece_gpu", gpu_tasks, stopping),
        _Lane([None] * jobs, "piece", cpu_tasks, stopping),
    ]
    try:
        while any(lane.todo or lane.pending for lane in lanes):
            for lane in lanes:
                lane.fill()
            pending = set().union(*(lane.pending for lane in lanes))
            if not pending:  # only when stopping; waiting on nothing would spin
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for lane in lanes:
                lane.pending -= done
            for future in done:
                if isinstance(future.exception(), _NotStarted):
                    continue  # the failure that stopped the run comes from another future
                yield future.result()
    finally:
        stopping.set()
        for lane in lanes:
            lane.close()


class LocalExecutor:
    """The default executor: `run_tasks` on this machine, with the run's own runtime and events."""

    name = "local"
    pieces_run_here = True

    def start(self) -> None:
        pass

    def for_pieces(self, runtime: Any, messages: Messages) -> tuple[Any, Messages]:
        return runtime, messages

    def check(self, requests: Sequence[PieceRequest]) -> None:
        """Every request fits: the limits were resolved for this machine (`resolve_options`)."""

    def run_tasks(
        self,
        tasks: Sequence[Task[T]],
        jobs: int,
        gpus: str | None,
        wants_gpu: Sequence[bool] | None,
        request: Callable[[bool], PieceRequest],
    ) -> Iterator[T]:
        return run_tasks(tasks, jobs, gpus, wants_gpu)

    def cleanup_run(self, run_id: str) -> int:
        return 0  # the run's runtime, on this machine, removes everything by the run's label

    def close(self) -> None:
        pass
