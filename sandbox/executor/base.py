"""The executor contract, stated once, and the scheduling policy every executor follows.

What runs when is decided by the orchestrator (`competition.py`: the phases, which pieces are not stored yet,
which submissions want a GPU); what a piece may use is decided here (`split_lanes`, `PieceRequest`). An executor
only places the pieces: threads on this machine (`local.py`) or tasks on a Ray cluster (`ray_cluster.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Task = Callable[[str | None], T]  # takes the GPU id it may use (None: no GPU)


class Messages(Protocol):
    """What a piece reports while it runs (the host-fault retry's warnings): the run's events, or a log."""

    def message(self, text: str) -> None: ...

    def warning(self, text: str) -> None: ...


@dataclass(frozen=True)
class PieceRequest:
    """What one piece holds while it runs: its container's CPU share and memory limit, and a GPU or none.

    GPU pieces hold no CPU slot, so they run beside the CPU pieces (a GPU machine's cores keep working), as the
    local executor's two lanes do."""

    cpus: float
    memory_bytes: int
    gpu: bool

    def describe(self) -> str:
        gib = self.memory_bytes / 1024**3
        return f"1 GPU and {gib:g} GiB" if self.gpu else f"{self.cpus:g} CPUs and {gib:g} GiB"


def split_lanes(
    tasks: Sequence[Task[T]], gpus: str | None, wants_gpu: Sequence[bool] | None
) -> tuple[list[Task[T]], list[Task[T]]]:
    """(GPU tasks, CPU tasks): with `gpus`, task i is a GPU task when `wants_gpu[i]` (None: every task is);
    without `gpus` every task is a CPU task."""
    if wants_gpu is not None and len(wants_gpu) != len(tasks):
        raise ValueError(f"wants_gpu has {len(wants_gpu)} entries for {len(tasks)} tasks")
    on_gpu = [bool(gpus) and (wants_gpu is None or wants_gpu[i]) for i in range(len(tasks))]
    gpu_tasks = [task for task, gpu in zip(tasks, on_gpu, strict=True) if gpu]
    cpu_tasks = [task for task, gpu in zip(tasks, on_gpu, strict=True) if not gpu]
    return gpu_tasks, cpu_tasks


class Executor(Protocol):
    """Runs piece functions. The contract of `run_tasks` (both executors keep it):

    - a task is called with the GPU it may use: None for a CPU task, an id (`"0"`) or `"all"` for a GPU task;
    - results are yielded one by one as tasks finish, in the caller's thread, which stores them;
    - once a task raises, nothing new starts and the exception is raised.
    """

    name: str
    pieces_run_here: bool  # whether pieces run with the run's own runtime (else each worker makes its own)

    def start(self) -> None:
        """Connects to where the pieces will run (a Ray cluster), before the run folder is made."""
        ...

    def for_pieces(self, runtime: Any, messages: Messages) -> tuple[Any, Messages]:
        """The runtime and the messages a piece may hold where this executor runs it (on this machine: the run's
        own; on another machine: ones that can be shipped there)."""
        ...

    def check(self, requests: Sequence[PieceRequest]) -> None:
        """Raises a one-line SandboxError, before anything runs, when no worker could ever take a request."""
        ...

    def run_tasks(
        self,
        tasks: Sequence[Task[T]],
        jobs: int,
        gpus: str | None,
        wants_gpu: Sequence[bool] | None,
        request: Callable[[bool], PieceRequest],
    ) -> Iterator[T]: ...

    def cleanup_run(self, run_id: str) -> int:
        """Removes what the run left on the workers' machines (the driver's own is removed by its runtime)."""
        ...

    def close(self) -> None: ...
