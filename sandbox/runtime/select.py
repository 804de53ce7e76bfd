"""Choosing a runtime by name (`--runtime docker|process`, `--isolation runc|gvisor`)."""

from __future__ import annotations

from sandbox.errors import SandboxError


def make_runtime(name: str, isolation: str = "runc"):
    if name == "docker":
        from sandbox.runtime.docker import DockerRuntime

        return DockerRuntime(oci_runtime="runsc" if isolation == "gvisor" else None)
    if name == "process":
        from sandbox.runtime.process import ProcessRuntime

        return ProcessRuntime()
    raise SandboxError(f"--runtime {name}: unknown; use docker or process")
