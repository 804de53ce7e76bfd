"""Runtimes run one piece's container job and return what it wrote: Docker (isolating) or a local process."""

from sandbox.runtime.base import ContainerJob, JobOutcome, Limits, Runtime
from sandbox.runtime.select import make_runtime

__all__ = ["ContainerJob", "JobOutcome", "Limits", "Runtime", "make_runtime"]
