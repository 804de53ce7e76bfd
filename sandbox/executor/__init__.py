"""Executors run piece functions; the local one uses threads, a cluster one can reuse the same functions."""

from sandbox.executor.local import Task, run_tasks

__all__ = ["Task", "run_tasks"]
