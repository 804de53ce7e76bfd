"""`sandbox doctor`: before a first run, checks what a run needs and says how to fix what is missing.

A newcomer's failed run names one problem at a time; the doctor names them all at once, one line each, with the
fix. It changes nothing on the machine: no pull, no build, at most one tiny container (which confirms that the
limits a run sets are applied). Each check is a small function that returns a `Check`, so that tests and other
commands can call one alone, with the image list or runtime name they choose.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import docker
import requests
from docker.errors import APIError, ContainerError, DockerException, ImageNotFound

from sandbox.bundled import default_dataset_dir
from sandbox.dataset import load_dataset
from sandbox.errors import DataSetError, RuntimeUnavailable, SandboxError
from sandbox.image_names import image_tag, is_sandbox_image
from sandbox.images import (
    CPU_TARGETS,
    GPU_TARGETS,
    HASH_LABEL,
    ROOT_BUILD_HELP,
    bootstrap_problem,
    debootstrap_path,
    image_staleness,
    local_base_id,
)
from sandbox.runtime.base import LABEL_APP, SUBMISSION_UID
from sandbox.runtime.docker import GPU_RUNTIME_FIX, KEEPER_IMAGE, docker_client, gpu_access

Status = Literal["ok", "warn", "fail", "info", "skip"]
DEFAULT_MIN_FREE_GIB = 1.0  # the shipped run stores about 65 MB; this leaves room for bigger data sets
GVISOR_RUNTIME = "runsc"  # the name `--isolation gvisor` asks Docker for (runtime/select.py)
INSTALL_HELP = "`scripts/install-docker.sh` (as root, or as a user with sudo)"
_STYLE = {
    "ok": ("green", "ok"),
    "warn": ("yellow", "warn"),
    "fail": ("red", "FAIL"),
    "info": ("cyan", "info"),
    "skip": ("dim", "skip"),
}
# The tiny container's limits and how it reads them back: cgroup v2 files first, else v1's.
_PROBE_MEMORY, _PROBE_PIDS, _PROBE_CPU_QUOTA = 64 * 1024**2, 64, 50_000
_PROBE_SCRIPT = (
    "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max 2>/dev/null || "
    "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max "
    "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
)


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, what was found and, when it is not ok, what to do."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        """Only failures stop a run; warnings (an optional feature missing) and info do not."""
        return self.status == "fail"


def _what_failed(exc: SandboxError) -> str:
    """An error's place and problem; its fix goes in the fix column, sometimes replaced by a better one."""
    return f"{exc.where}: {exc.problem}" if exc.where else exc.problem


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 1024**3:.1f} GiB"


def _docker_fix() -> str:
    """The likeliest fix for an unreachable daemon, from what this host shows (no daemon to ask)."""
    host = os.environ.get("DOCKER_HOST")
    socket = Path("/var/run/docker.sock")
    if host:
        return f"DOCKER_HOST is {host}: point it at a running daemon, or unset it for the local one"
    if socket.exists() and not os.access(socket, os.R_OK | os.W_OK):
        return (
            f"{socket} is not yours to use: {INSTALL_HELP} adds you to the docker group; then log in again "
            "(or `newgrp docker`)"
        )
    if not any(Path(folder, "dockerd").exists() for folder in ("/usr/bin", "/usr/sbin", "/usr/local/bin")):
        return f"install and start Docker: {INSTALL_HELP}"
    return f"start dockerd: {INSTALL_HELP} starts it, also where there is no init system"


def check_docker(timeout: int = 10) -> tuple[docker.DockerClient | None, dict, Check]:
    """Connects as a run does (`docker_client`); the daemon's info feeds the checks that follow."""
    try:
        client = docker_client(timeout=timeout)
        info = client.info()
        api = client.version().get("ApiVersion", "?")
    except RuntimeUnavailable as exc:
        return None, {}, Check("docker", "fail", _what_failed(exc), _docker_fix())
    except (DockerException, requests.RequestException) as exc:
        return None, {}, Check("docker", "fail", f"Docker answered a ping but not `info` ({exc})", _docker_fix())
    rootless = any("rootless" in option for option in info.get("SecurityOptions") or [])
    detail = (
        f"Docker {info.get('ServerVersion', '?')} (API {api}), {info.get('NCPU', '?')} CPUs, "
        f"{_gib(info.get('MemTotal') or 0)} memory, default runtime {info.get('DefaultRuntime', 'runc')}"
        + (", rootless" if rootless else "")
    )
    return client, info, Check("docker", "ok", detail)


def _cgroup_fix(info: dict) -> str:
    """Where the missing controllers come from differs between cgroup v1, v2 and rootless Docker."""
    if any("rootless" in option for option in info.get("SecurityOptions") or []):
        return "rootless Docker enforces limits only on cgroup v2 with systemd delegating cpu, memory and pids"
    if str(info.get("CgroupVersion")) == "2":
        return (
            "enable the cpu, memory and pids controllers (cgroup.subtree_control); inside a container, run it "
            "with its own cgroup namespace and the controllers delegated"
        )
    return "boot the kernel with `cgroup_enable=memory swapaccount=1` (GRUB_CMDLINE_LINUX) and reboot"


def _probe_limits(client: docker.DockerClient, image: str) -> str | None:
    """Runs one locked-down container with small limits and reads them back from its cgroup; None when applied."""
    output = client.containers.run(
        image,
        ["sh", "-c", _PROBE_SCRIPT],
        remove=True,
        network_mode="none",
        read_only=True,
        user=SUBMISSION_UID,
        cap_drop=["ALL"],
        mem_limit=_PROBE_MEMORY,
        memswap_limit=_PROBE_MEMORY,
        pids_limit=_PROBE_PIDS,
        nano_cpus=_PROBE_CPU_QUOTA * 10_000,  # 0.5 CPU: Docker sets a 50 ms quota per 100 ms period
        labels={LABEL_APP: "doctor"},
        stderr=False,
    )
    values = output.decode(errors="replace").split()
    expected = [str(_PROBE_MEMORY), str(_PROBE_PIDS), str(_PROBE_CPU_QUOTA)]
    if values[:3] == expected:
        return None
    return (
        f"a container given memory, pids and CPU limits {' '.join(expected)} reads {' '.join(values[:3]) or 'nothing'}"
    )


def check_limits(client: docker.DockerClient, info: dict, probe_image: str = KEEPER_IMAGE) -> Check:
    """Memory, process and CPU limits are what keep a hostile submission from exhausting the machine."""
    where = f"cgroup v{info.get('CgroupVersion', '?')}, {info.get('CgroupDriver', '?')} driver"
    missing = [
        name
        for key, name in (("MemoryLimit", "memory"), ("PidsLimit", "pids"), ("CpuCfsQuota", "CPU"))
        if not info.get(key)
    ]
    if missing:
        return Check(
            "limits", "fail", f"Docker cannot enforce {', '.join(missing)} limits ({where})", _cgroup_fix(info)
        )
    swap = "" if info.get("SwapLimit") else "; no swap limit, so a container may swap beyond --memory"
    try:
        problem = _probe_limits(client, probe_image)
    except ImageNotFound:
        return Check(
            "limits", "ok", f"memory, pids and CPU limits supported ({where}; not tried: {probe_image} missing){swap}"
        )
    except ContainerError as exc:  # it ran, but this cgroup layout hides the files: the limits may still hold
        return Check(
            "limits",
            "warn",
            f"supported ({where}), but a test container could not read them back (exit {exc.exit_status})",
            f"check by hand: `docker run --rm --memory 64m {probe_image} cat /sys/fs/cgroup/memory.max`",
        )
    except APIError as exc:
        text = " ".join(str(exc.explanation or exc).split())[:300]
        return Check("limits", "fail", f"a container with limits did not start: {text}", _cgroup_fix(info))
    if problem:
        return Check("limits", "fail", f"limits are not applied: {problem}", _cgroup_fix(info))
    return Check("limits", "ok", f"memory, pids and CPU limits applied in a test container ({where}){swap}")


def _build_fix(client: docker.DockerClient, target: str | None = None) -> str:
    """`sandbox images build`, plus what it needs when Docker Hub is out of reach and no base image is here."""
    fix = "`sandbox images build` (a few minutes)"
    if target in GPU_TARGETS:
        fix = "`sandbox images build --gpu` (downloads about 3 GB of wheels per GPU image; docs/gpu.md)"
    problem = bootstrap_problem() if local_base_id(client) is None else None
    if problem is not None and debootstrap_path() is None:
        fix += f"; without Docker Hub it needs debootstrap: {INSTALL_HELP} installs it"
    elif problem is not None:
        fix += f"; without Docker Hub the base image is made with debootstrap, as root: {ROOT_BUILD_HELP}"
    return fix


def _image_check_name(tag: str, target: str | None) -> str:
    return f"image {target or tag}"


def check_image(client: docker.DockerClient, tag: str, target: str | None = None) -> Check:
    """A run needs each runtime image; `target` (a Dockerfile stage) also compares its content hash label."""
    name = _image_check_name(tag, target)
    try:
        image = client.images.get(tag)
    except ImageNotFound:
        if is_sandbox_image(tag) and (local_base_id(client) is not None or bootstrap_problem() is None):
            # `sandbox run` builds the images it needs: a fresh machine is ready, the first run just takes longer.
            return Check(name, "warn", f"{tag} missing: the first `sandbox run` builds it", _build_fix(client, target))
        return Check(name, "fail", f"{tag} missing", _build_fix(client, target))
    if target is None:
        return Check(name, "ok", f"{tag} present")
    stale, why = image_staleness(client, image.labels.get(HASH_LABEL), target)
    if stale:
        return Check(name, "warn", f"{tag} present but out of date: {why}", "`sandbox images build` rebuilds it")
    return Check(name, "ok", f"{tag} present, {why}")


def sandbox_images(gpu: bool = False) -> dict[str, str | None]:
    """The images `sandbox images build` makes and the shipped samples use: tag -> Dockerfile target; `gpu` adds
    the GPU images (built on demand, needed only by runs with --gpus)."""
    return {image_tag(target): target for target in CPU_TARGETS + (GPU_TARGETS if gpu else ())}


def check_gvisor(info: dict, runtime: str = GVISOR_RUNTIME, required: bool = False) -> Check:
    """gVisor is optional (`--isolation gvisor`): missing, it is a warning unless the run will ask for it."""
    runtimes = info.get("Runtimes") or {}
    if runtime in runtimes:
        path = (runtimes[runtime] or {}).get("path", "?")
        return Check("gvisor", "ok", f"runtime {runtime} registered ({path}): --isolation gvisor works")
    return Check(
        "gvisor",
        "fail" if required else "warn",
        f"no {runtime} runtime registered with Docker (it has {', '.join(sorted(runtimes)) or 'none'}); "
        "--isolation gvisor will not start",
        "`scripts/install-docker.sh --gvisor` installs runsc and registers it",
    )


def check_gpus(info: dict, required: bool = False) -> Check:
    """Whether Docker can pass GPUs into containers (the NVIDIA container toolkit): information for a CPU run, a
    failure when the run will ask for GPUs (`--gpus`), as it would stop there."""
    devices = sorted(glob.glob("/dev/nvidia[0-9]*"))
    ways = gpu_access(info)
    here = f"{len(devices)} NVIDIA GPU(s) on this host" if devices else "no NVIDIA GPU on this host"
    if not ways:
        return Check(
            "gpus",
            "fail" if required else "info",
            f"no GPU runtime: Docker has no nvidia runtime, no NVIDIA CDI device and no container toolkit hook, so "
            f"--gpus cannot start a container ({here}; runs without --gpus use the CPU)",
            GPU_RUNTIME_FIX,
        )
    if not devices:
        return Check(
            "gpus",
            "warn" if required else "info",
            f"{', '.join(ways)}, but {here}",
            "load the NVIDIA driver (`nvidia-smi` lists the GPUs), or point DOCKER_HOST at the GPU machine",
        )
    return Check("gpus", "ok" if required else "info", f"{here}; {', '.join(ways)}: --gpus can use them")


def _existing_folder(path: Path) -> Path:
    """The run folder may not exist yet: its nearest existing parent is on the filesystem it will use."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(out: Path, min_free_gib: float = DEFAULT_MIN_FREE_GIB) -> Check:
    """A run stores every attack's images and every piece's inputs under its run folder."""
    folder = _existing_folder(out)
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        return Check("disk", "fail", f"{folder}: cannot read its free space ({exc})", "choose another --out")
    if not os.access(folder, os.W_OK):
        return Check("disk", "fail", f"{folder} is not writable", "choose a run folder you can write with --out")
    where = f"{_gib(free)} free in {folder} (for run folder {out})"
    if free < min_free_gib * 1024**3:
        return Check(
            "disk",
            "fail",
            f"{where}, under the {min_free_gib:g} GiB asked",
            "free space there, or choose --out elsewhere",
        )
    return Check("disk", "ok", where)


def check_dataset(data: Path | None = None) -> Check:
    """The data set is checked as a run loads it (dataset.load_dataset), so its errors are the run's."""
    try:
        ds = load_dataset(data or default_dataset_dir())
    except DataSetError as exc:
        fix = exc.fix or "see `sandbox dataset check`"
        if data is None:
            fix = "the shipped data set is missing from this install: reinstall the package, or pass --data DIR"
        return Check("dataset", "fail", _what_failed(exc), fix)
    return Check(
        "dataset",
        "ok",
        f"{ds.root}: {len(ds.records)} images, {ds.size[0]}x{ds.size[1]} {ds.mode}, {ds.num_classes} classes "
        f"({ds.name})",
    )


def run_checks(
    data: Path | None = None,
    out: Path = Path("runs"),
    min_free_gib: float = DEFAULT_MIN_FREE_GIB,
    isolation: str = "runc",
    images: Sequence[str] | None = None,
    gvisor_runtime: str = GVISOR_RUNTIME,
    gpus: str | None = None,
) -> Iterator[Check]:
    """Every check in turn, as it finishes; those that need Docker are skipped when it cannot be reached.

    `images` replaces the sandbox's own image tags (a tag of ours is also compared with its content hash);
    `gvisor_runtime` the runtime name looked for. Tests use both to check the report without touching the real
    images or daemon. `gpus` (the run's `--gpus`) adds the GPU images and makes a missing GPU runtime a failure.
    """
    client, info, docker_check = check_docker()
    yield docker_check
    if images is None:
        tags = sandbox_images(gpu=bool(gpus))
    else:
        tags = {tag: sandbox_images(gpu=True).get(tag) for tag in images}
    if client is None:
        for name in ("limits", *(_image_check_name(tag, target) for tag, target in tags.items()), "gvisor", "gpus"):
            yield Check(name, "skip", "not checked: needs Docker")
    else:
        yield check_limits(client, info)
        for tag, target in tags.items():
            yield check_image(client, tag, target)
        yield check_gvisor(info, gvisor_runtime, required=isolation == "gvisor")
        yield check_gpus(info, required=bool(gpus))
    yield check_disk(out, min_free_gib)
    yield check_dataset(data)


def render(check: Check, safe: Callable[[object], str]) -> str:
    """Rich markup for one check; `safe` makes paths and the daemon's words inert (cli.py's `_safe`)."""
    color, label = _STYLE.get(check.status, ("dim", check.status))
    line = f"[{color}]{label:<4}[/{color}] {safe(f'{check.name:<20}')} {safe(check.detail)}"
    return line + (f"  [bold]fix:[/bold] {safe(check.fix)}" if check.fix else "")
