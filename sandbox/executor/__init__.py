"""Executors run piece functions: threads on this machine (`local`) or Ray tasks on a cluster (`ray`), over the
same functions; the contract and the scheduling policy are in `base.py`."""

from sandbox.executor.base import Executor, PieceRequest, Task
from sandbox.executor.local import LocalExecutor, run_tasks
from sandbox.executor.select import make_executor

__all__ = ["Executor", "LocalExecutor", "PieceRequest", "Task", "make_executor", "run_tasks"]
