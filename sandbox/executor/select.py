"""Choosing an executor by name (`--executor local|ray`, `--ray-address`), as `runtime/select.py` chooses runtimes."""

from __future__ import annotations

from functools import partial

from sandbox.errors import SandboxError
from sandbox.executor.base import Executor
from sandbox.executor.local import LocalExecutor
from sandbox.runtime.select import make_runtime

EXECUTORS = ("local", "ray")


def make_executor(
    executor: str | Executor, runtime: str, isolation: str, gpus: str | None, ray_address: str | None = None
) -> Executor:
    """An executor object passed in (a library caller's, a test's) is used as it is."""
    if not isinstance(executor, str):
        return executor
    if executor == "local":
        if ray_address:
            raise SandboxError(f"--ray-address {ray_address}", "given without --executor ray", "add --executor ray")
        return LocalExecutor()
    if executor == "ray":
        from sandbox.executor.ray_cluster import RayExecutor, import_ray

        import_ray()  # fails here, with how to install it, before anything else
        if gpus and gpus != "all":
            raise SandboxError(
                f"--gpus {gpus}",
                "with --executor ray, Ray gives each GPU piece one GPU of the machine it runs on",
                "use --gpus all",
            )
        # Workers keep one spare output folder ready, as a local run keeps one per worker.
        factory = partial(make_runtime, runtime, isolation, keep_spares=1)
        gpu_factory = partial(make_runtime, runtime, isolation, keep_spares=1, gpus=gpus) if gpus else None
        return RayExecutor(factory, f"{runtime}/{isolation}", ray_address, gpu_runtime_factory=gpu_factory)
    raise SandboxError(f"executor '{executor}'", "unknown", f"use one of {', '.join(EXECUTORS)}")
