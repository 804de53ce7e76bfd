"""Choosing a runtime by name (`--runtime docker|process`, `--isolation runc|gvisor`)."""

from __future__ import annotations

from sandbox.errors import SandboxError


def make_runtime(
    name: str, isolation: str = "runc", measure_memory: bool = False, keep_spares: int = 0, gpus: str | None = None
):
    """`gpus`: the run's `--gpus`; Docker must be able to pass GPUs (the process runtime sees the host's)."""
    if name == "docker":
        from sandbox.runtime.docker import DockerRuntime

        oci_runtime = "runsc" if isolation == "gvisor" else None
        return DockerRuntime(oci_runtime=oci_runtime, measure_memory=measure_memory, keep_spares=keep_spares, gpus=gpus)
    if name == "process":
        from sandbox.runtime.process import ProcessRuntime

        return ProcessRuntime()
    raise SandboxError(f"runtime '{name}'", "unknown", "use docker or process")
