"""DockerRuntime: each piece in its own locked-down container, through the Docker SDK.

The output folder is a size-capped tmpfs volume. A tmpfs vanishes when the last container using it stops, so a
tiny *keeper* container (our own image, not the submission's) holds the volume while the submission runs as
PID 1 of its container; after it exits or is killed at the time limit (which ends every process it started),
the files are read back through the keeper with `get_archive`, never by following anything on the host. Each
volume serves exactly one piece; one keeper holds a few of them (`KEEPER_FOLDERS`), since a container's life costs
the machine about as much as a small piece's own work.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound, create_api_error_from_http_exception
from docker.types import DeviceRequest, LogConfig

from sandbox.errors import HostFault, RunStopping, RuntimeUnavailable, SandboxError, one_line
from sandbox.image_names import image_tag, is_sandbox_image
from sandbox.outputs_read import collect_tar_stream
from sandbox.runtime.base import (
    LABEL_APP,
    LABEL_PIECE,
    LABEL_RUN,
    SUBMISSION_UID,
    WEIGHTS_ENV,
    WEIGHTS_MOUNT,
    ContainerJob,
    JobOutcome,
    Limits,
    size_bytes,
    tail_text,
)

KEEPER_IMAGE = image_tag("base")
DOCKER_HELP = (
    "start it (on Debian without Docker: `scripts/install-docker.sh`, as root or with sudo), check "
    "`docker info`, or use the process runtime for trusted code"
)


def docker_client(timeout: int = 120) -> docker.DockerClient:
    """A client that has answered a ping, or the one-line error that says how to get Docker running."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except (DockerException, requests.RequestException) as exc:
        raise RuntimeUnavailable("", f"Docker is not reachable ({type(exc).__name__})", DOCKER_HELP) from None


def _name(run_id: str, piece_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", piece_id)[-80:]
    return f"sbx-{run_id[:12]}-{slug}-{uuid.uuid4().hex[:6]}"


def _still_running(container) -> bool:
    try:
        container.reload()
    except NotFound:
        return False
    return bool(container.attrs["State"].get("Running"))


def _removed(thing) -> int:
    """1 when this call removed it, 0 when something else already had (a piece's own removal, say)."""
    try:
        thing.remove(force=True)
        return 1
    except NotFound:
        return 0


def _remove(containers: list, volumes: list) -> None:
    """Containers first: a volume in use cannot be removed. What fails here, `cleanup_run` removes by label."""
    for container in containers:
        if container is not None:
            try:
                container.remove(force=True, v=True)
            except (DockerException, requests.RequestException):
                pass
    for volume in volumes:
        try:
            volume.remove(force=True)
        except (DockerException, requests.RequestException):
            pass


# Where a piece's own mounts go, and the kernel's file systems: an image's VOLUME inside one (or a relative one)
# makes every one of its containers fail to start, which would look like the host's fault, on every resume.
RESERVED_PATHS = frozenset(
    {"/code", "/input_images", "/output_images", "/output_data", WEIGHTS_MOUNT, "/proc", "/sys", "/dev"}
)


def _unmountable(path: str) -> bool:
    """A declared VOLUME that no tmpfs can be mounted over: not a plain absolute path, the root or a kernel file
    system, or inside a reserved place (a piece's own mount at the same path simply replaces it)."""
    trimmed = path.rstrip("/") or "/"
    if not trimmed.startswith("/") or posixpath.normpath(trimmed) != trimmed:
        return True
    if trimmed in ("/", "/proc", "/sys", "/dev"):
        return True
    return any(trimmed.startswith(f"{reserved}/") for reserved in RESERVED_PATHS)


def _remove_keeper_named(client, name: str, volumes: list) -> None:
    try:
        containers = [client.containers.get(name)]
    except (DockerException, requests.RequestException):
        containers = []  # never created
    _remove(containers, volumes)


KEEPER_FOLDERS = 4  # output folders one keeper holds in a run (one piece each)
SMALL_OUTPUT_BYTES = 64 * 1024**2  # a used folder holding more retires its keeper's unused folders


@dataclass(eq=False)
class _Keeper:
    """A keeper container and the volumes it holds; removed once each of its folders is handed back."""

    container: Any
    volumes: list
    out: int  # folders handed out and not yet back, or still spare
    retired: bool = False  # hands out no more folders (one of them held a large output)


@dataclass(eq=False)
class OutputFolder:
    """One fresh, empty, size-capped tmpfs volume for one piece, and where its keeper sees it."""

    volume: Any
    keeper: _Keeper
    path: str


def device_requests(gpus: str | None) -> list[DeviceRequest]:
    """`all` or device ids (`0` or `0,1`), as in `docker run --gpus`."""
    if not gpus:
        return []
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=gpus.split(","), capabilities=[["gpu"]])]


NVIDIA_HOOK = "nvidia-container-runtime-hook"  # dockerd offers `--gpus` when it finds this at start-up
GPU_RUNTIME_FIX = (
    "install the NVIDIA Container Toolkit from NVIDIA's apt repository (it is not in Debian's main archive), run "
    "`nvidia-ctk runtime configure --runtime=docker` and restart dockerd (docs/gpu.md)"
)


def gpu_access(info: dict) -> list[str]:
    """The ways this Docker daemon (its `docker info`) can pass NVIDIA GPUs into a container; none: `--gpus`
    fails at every GPU container. The hook is looked for on this host, where a local dockerd finds it."""
    ways = []
    if "nvidia" in (info.get("Runtimes") or {}):
        ways.append("nvidia runtime registered")
    if shutil.which(NVIDIA_HOOK):
        ways.append(f"{NVIDIA_HOOK} installed")
    cdi = [d for d in info.get("DiscoveredDevices") or [] if "nvidia" in str(d.get("ID", ""))]
    if cdi:
        ways.append(f"{len(cdi)} NVIDIA CDI devices")
    return ways


def require_gpu_access(info: dict, gpus: str) -> None:
    """A run with `--gpus` stops before its first piece, in one line, when Docker cannot pass GPUs at all."""
    if not gpu_access(info):
        raise SandboxError(
            f"--gpus {gpus}",
            "Docker cannot pass GPUs into containers here: no GPU runtime (no nvidia runtime, no "
            f"{NVIDIA_HOOK}, no NVIDIA CDI device)",
            GPU_RUNTIME_FIX + "; or run without --gpus",
        )


class _MemoryPeak:
    """Samples a running container's memory use in a thread; cgroup v1 also reports its own maximum."""

    def __init__(self, container) -> None:
        self.container = container
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                stats = self.container.stats(stream=False).get("memory_stats", {})
            except (DockerException, requests.RequestException):
                return
            self.peak = max(self.peak, stats.get("max_usage") or 0, stats.get("usage") or 0)
            self._done.wait(0.5)

    def stop(self) -> int | None:
        self._done.set()
        self._thread.join(timeout=5)
        return self.peak or None


class DockerRuntime:
    name = "docker"

    def __init__(
        self,
        oci_runtime: str | None = None,
        keeper_image: str = KEEPER_IMAGE,
        measure_memory: bool = False,
        keep_spares: int = 0,
        gpus: str | None = None,
    ) -> None:
        """`oci_runtime` is e.g. `runsc` for gVisor; None uses the daemon's default (runc).

        `gpus`: the run's `--gpus`; the daemon must be able to pass GPUs, or this raises before any piece runs.

        `keep_spares`: output folders (volume and keeper) to keep started ahead of the pieces that will use them;
        0 for a one-off caller such as `sandbox validate`, the run's workers for a run.

        `measure_memory` samples the container's memory twice a second (for `sandbox validate`).
        """
        self.oci_runtime = oci_runtime
        self.measure_memory = measure_memory
        self._reaper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reaper")
        self._removals: list[Future] = []
        self._declared_volumes: dict[str, list[str]] = {}
        self.keep_spares = keep_spares
        self._spares: dict[tuple[str, str], list[OutputFolder]] = {}
        self._spare_lock = threading.Lock()
        self._preparing = 0  # folders being started
        self._preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keeper")
        self._preparations: list[Future] = []
        self.keeper_image = keeper_image
        self.closed = False  # set by `close`: no piece starts a container any more
        self.client = docker_client()
        try:
            info = self.client.info() if oci_runtime or gpus else {}
        except (DockerException, requests.RequestException) as exc:
            raise RuntimeUnavailable("", f"Docker is not reachable ({type(exc).__name__})", DOCKER_HELP) from None
        runtimes = info.get("Runtimes") or {}
        if gpus:
            require_gpu_access(info, gpus)
        if oci_runtime and oci_runtime not in runtimes:
            raise RuntimeUnavailable(
                "",
                f"Docker has no '{oci_runtime}' runtime (it has {', '.join(sorted(runtimes))})",
                "for gVisor run `scripts/install-docker.sh --gvisor` (or install Debian's runsc, register it in "
                "/etc/docker/daemon.json and restart dockerd)",
            )

    def isolation(self) -> str:
        return f"docker/{self.oci_runtime or 'runc'}"

    def check(self, images: list[str]) -> dict[str, str]:
        problems = {}
        for image in sorted(set(images) | {self.keeper_image}):
            try:
                bad = [path for path in self._declared(image) if _unmountable(path)]
                if bad:
                    problems[image] = (
                        f"image {image} declares VOLUME {bad[0]}, where no folder can be mounted (not a plain "
                        f"absolute path, or inside {', '.join(sorted(RESERVED_PATHS))}); rebuild it without that "
                        "VOLUME"
                    )
            except ImageNotFound:
                problems[image] = f"image {image} not found; build the sandbox's images with `sandbox images build`"
                if not is_sandbox_image(image):
                    problems[image] = f"image {image} not found; `docker pull {image}` or `docker load` it first"
            except (DockerException, requests.RequestException) as exc:
                raise RuntimeUnavailable("", f"Docker stopped answering ({exc})", DOCKER_HELP) from None
        return problems

    def cleanup_run(self, run_id: str, settle_s: float = 10.0) -> int:
        """Removes the run's containers, then its volumes, by label, until none is left or `settle_s` has passed.

        A container still being removed (by its piece's own removal here, or on a cluster by another worker process
        on this machine) holds its volume, and Docker refuses (409) until it is gone: what is refused is tried again,
        not reported."""
        preparing, self._preparations = self._preparations, []
        wait(preparing, timeout=120)
        with self._spare_lock:
            for key in [key for key in self._spares if key[0] == run_id]:
                del self._spares[key]  # removed below, by their label
        pending, self._removals = self._removals, []
        wait(pending, timeout=120)
        label = {"label": f"{LABEL_RUN}={run_id}"}
        removed, deadline = 0, time.monotonic() + settle_s
        try:
            while True:
                things = self.client.containers.list(all=True, filters=label, ignore_removed=True)
                things += self.client.volumes.list(filters=label)  # after the containers that hold them
                if not things or time.monotonic() > deadline:
                    return removed
                for thing in things:
                    try:
                        removed += _removed(thing)
                    except APIError:
                        pass  # in use, or being removed by someone else: seen again next round
                time.sleep(0.2)
        except (DockerException, requests.RequestException) as exc:
            raise RuntimeUnavailable("", f"Docker stopped answering ({exc})", DOCKER_HELP) from None

    def _locked_down(self, labels: dict[str, str]) -> dict:
        """What every container of a piece gets, the keeper too."""
        return dict(
            network_mode="none",
            read_only=True,
            user=SUBMISSION_UID,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            labels=labels,
            runtime=self.oci_runtime,
        )

    def _new_output_folders(self, run_id: str, output_size: str, count: int) -> list[OutputFolder]:
        """`count` fresh, empty, size-capped tmpfs volumes, and one keeper container that holds them mounted."""
        labels = {LABEL_APP: "1", LABEL_RUN: run_id}
        name = _name(run_id, "output")
        tmpfs = {"type": "tmpfs", "device": "tmpfs", "o": f"size={output_size},uid=65534,gid=65534"}
        volumes: list = []
        try:
            for index in range(count):
                volume = self.client.volumes.create(
                    name=f"{name}-out{index}", driver="local", driver_opts=tmpfs, labels=labels
                )
                volumes.append(volume)
            container = self.client.containers.run(
                self.keeper_image,
                ["sleep", "infinity"],
                name=f"{name}-keeper",
                detach=True,
                mem_limit="64m",
                pids_limit=8 if self.oci_runtime is None else 128,  # gVisor's own threads count too
                volumes={volume.name: {"bind": f"/out/{i}", "mode": "ro"} for i, volume in enumerate(volumes)},
                **self._locked_down(labels),
            )
        except BaseException:  # a keeper created but not started would hold the volumes: removed by its name first
            self._removals.append(self._reaper.submit(_remove_keeper_named, self.client, f"{name}-keeper", volumes))
            raise
        keeper = _Keeper(container, volumes, out=count)
        return [OutputFolder(volume, keeper, f"/out/{i}") for i, volume in enumerate(volumes)]

    def _output_folder(self, run_id: str, output_size: str) -> OutputFolder:
        """A spare output folder started while earlier pieces ran, or a new one; more spares are started when few
        are left.

        Each folder serves exactly one piece, so sharing nothing: no other submission's container ever mounts it.
        Starting keepers is moved off the pieces' path, and one keeper holds `KEEPER_FOLDERS` of them. Spares are
        kept only where `keep_spares` is on (a run, which removes them at its end through `close`/`cleanup_run`).
        """
        key = (run_id, output_size)
        with self._spare_lock:
            ready = self._spares.get(key)
            folder = ready.pop() if ready else None
            prepare = self.keep_spares and len(self._spares.get(key, [])) + self._preparing < self.keep_spares
            if prepare:
                self._preparing += KEEPER_FOLDERS
        if prepare:
            self._preparations.append(self._preparer.submit(self._prepare_spares, key))
        if folder is not None:
            try:
                running = _still_running(folder.keeper.container)
            except BaseException:  # the daemon failed the question: the folder goes back, the piece is retried
                self._hand_back(folder, 0)
                raise
            if not running:  # a daemon restart stopped its keeper
                self._retire(folder.keeper)
                self._hand_back(folder, 0)
                folder = None
        return folder if folder is not None else self._new_output_folders(run_id, output_size, 1)[0]

    def prepare_run(self, run_id: str, limits: Limits) -> None:
        """Starts the run's first output folders (a keeper and its volumes, ~0.2 s) while the run is being set up."""
        key = (run_id, limits.output_size)
        with self._spare_lock:
            if not self.keep_spares or self._spares.get(key) or self._preparing:
                return
            self._preparing += KEEPER_FOLDERS
        self._preparations.append(self._preparer.submit(self._prepare_spares, key))

    def _prepare_spares(self, key: tuple[str, str]) -> None:
        try:
            folders = self._new_output_folders(*key, KEEPER_FOLDERS)
        except (DockerException, requests.RequestException):
            return  # the piece that needs one makes its own, and reports the fault
        finally:
            with self._spare_lock:
                self._preparing -= KEEPER_FOLDERS
        with self._spare_lock:
            if self.keep_spares:
                self._spares.setdefault(key, []).extend(folders)
                return
        for folder in folders:  # closed meanwhile
            self._hand_back(folder, 0)

    def _retire(self, keeper: _Keeper) -> None:
        """Its spare folders are handed back unused: it is removed once its folders in use are back."""
        with self._spare_lock:
            keeper.retired = True
            spares = [f for folders in self._spares.values() for f in folders if f.keeper is keeper]
            for folders in self._spares.values():
                folders[:] = [f for f in folders if f.keeper is not keeper]
        for folder in spares:
            self._hand_back(folder, 0)

    def _hand_back(self, folder: OutputFolder, output_bytes: int) -> None:
        """A piece is done with its folder (or a spare is not needed). A used folder's files stay in memory until
        its keeper is removed, so a large one (or one with files the host skipped, which it did not measure)
        retires the keeper: at most `KEEPER_FOLDERS - 1` folders of up to `SMALL_OUTPUT_BYTES` each wait beside
        a piece's own folder."""
        if output_bytes > SMALL_OUTPUT_BYTES and not folder.keeper.retired:
            self._retire(folder.keeper)
        with self._spare_lock:
            folder.keeper.out -= 1
            last = folder.keeper.out == 0
        if last:
            keeper = folder.keeper
            self._removals.append(self._reaper.submit(_remove, [keeper.container], keeper.volumes))

    def close(self) -> None:
        """No more pieces and no more spares; removes the spares started and waits for every removal (a run calls it
        when it ends or stops; a stopping run then removes its containers still running with `cleanup_run`)."""
        with self._spare_lock:
            self.closed = True
            self.keep_spares = 0
        wait(self._preparations, timeout=120)
        with self._spare_lock:
            spares = [folder for folders in self._spares.values() for folder in folders]
            self._spares.clear()
        for folder in spares:
            self._hand_back(folder, 0)
        wait(self._removals, timeout=120)

    def _tmpfs_mounts(self, image: str, size: str, bound: set[str]) -> dict[str, str]:
        """`/tmp`, and a capped tmpfs over every VOLUME the image declares: Docker would otherwise give each one
        an anonymous volume on the host's disk, writable despite the read-only root and with no size limit."""
        paths = {"/tmp", *(path.rstrip("/") for path in self._declared(image))} - bound - {""}
        return {path: f"size={size},mode=1777" for path in sorted(paths)}

    def _declared(self, image: str) -> list[str]:
        """The VOLUME paths the image declares (read once per image)."""
        declared = self._declared_volumes.get(image)
        if declared is None:
            config = self.client.images.get(image).attrs.get("Config") or {}
            declared = self._declared_volumes[image] = sorted(config.get("Volumes") or {})
        return declared

    def wait_until_available(self, timeout_s: float) -> bool:
        """Pings the daemon every 2 s for up to `timeout_s` (a restart of dockerd, say); True once it answers."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.client.ping()
                return True
            except (DockerException, requests.RequestException):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def run(self, job: ContainerJob) -> JobOutcome:
        """Only what the submission did is an outcome; anything the daemon fails at is raised as a host fault."""
        try:
            return self._run(job)
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise RuntimeUnavailable(job.piece_id, f"Docker stopped answering ({exc})", DOCKER_HELP) from None
        except NotFound as exc:
            raise HostFault(
                job.piece_id, f"its container, volume or image vanished mid-piece ({one_line(exc.explanation or exc)})"
            ) from None
        except APIError as exc:
            raise HostFault(job.piece_id, f"Docker failed the container ({one_line(exc.explanation or exc)})") from None
        except requests.exceptions.ReadTimeout:
            raise HostFault(job.piece_id, "Docker did not answer in time after the container ended") from None

    def _wait(self, container, deadline: float) -> bool:
        """Waits for the container to exit; kills it at the deadline and returns whether it timed out."""
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                container.wait(timeout=max(1.0, min(remaining, 30.0)))
                return False
            except (requests.exceptions.ReadTimeout, requests.ConnectionError):
                self.client.ping()  # a read timeout is expected; a daemon that went away raises here
        try:
            container.kill()
        except APIError as exc:
            if exc.status_code != 409:  # 409: it exited just now; anything else is the daemon's fault
                raise
        container.wait(timeout=60)
        return True

    def _refuse_if_closed(self, job: ContainerJob) -> None:
        if self.closed:
            raise RunStopping(job.piece_id, "not started: the run is stopping", "resume the run folder to run it")

    def _run(self, job: ContainerJob) -> JobOutcome:
        """Create the locked-down container, run it to its exit or deadline, then read what it left."""
        self._refuse_if_closed(job)
        folder = self._output_folder(job.run_id, job.limits.output_size)
        container = None
        output_bytes = SMALL_OUTPUT_BYTES + 1  # unknown until read: an error retires the keeper
        try:
            container = self._create(job, folder.volume.name)
            self._refuse_if_closed(job)  # closed while creating: the stopping run's sweep may have missed it
            started = time.monotonic()
            container.start()
            peak = _MemoryPeak(container) if self.measure_memory else None
            timed_out = self._wait(container, started + job.time_limit_s)
            wall = time.monotonic() - started
            outcome = self._outcome(job, container, folder, timed_out, wall, peak.stop() if peak else None)
            # What its folder holds in memory: files too large or not plain files were skipped, not counted.
            output_bytes = sum(len(data) for data in outcome.files.values())
            if outcome.skipped_files:
                output_bytes = SMALL_OUTPUT_BYTES + 1
            return outcome
        finally:
            # The submission has ended and its outputs are read: removing its container (~0.2 s) need not hold up
            # the next piece. `cleanup_run` waits for these removals.
            self._removals.append(self._reaper.submit(_remove, [container], []))
            self._hand_back(folder, output_bytes)

    def _create(self, job: ContainerJob, volume_name: str):
        """The submission's container: read-only code and inputs, its output volume, every limit of the job."""
        limits = job.limits
        labels = {LABEL_APP: "1", LABEL_RUN: job.run_id, LABEL_PIECE: job.piece_id}
        args = [arg.format(input="/input_images", output=job.output_mount) for arg in job.args]
        volumes = {
            job.code_dir: {"bind": "/code", "mode": "ro"},
            job.input_dir: {"bind": "/input_images", "mode": "ro"},
            volume_name: {"bind": job.output_mount, "mode": "rw"},
        }
        environment = {**job.env, "HOME": "/tmp"}
        if job.weights_dir:  # the same public files for every submission, never writable (docs/isolation.md)
            volumes[job.weights_dir] = {"bind": WEIGHTS_MOUNT, "mode": "ro"}
            environment[WEIGHTS_ENV] = WEIGHTS_MOUNT
        return self.client.containers.create(
            job.image,
            args,
            entrypoint=[f"./{job.entry_point}"],  # overrides any ENTRYPOINT the image sets
            name=_name(job.run_id, job.piece_id),
            working_dir="/code",
            environment=environment,
            init=True,
            mem_limit=limits.memory,
            memswap_limit=limits.memory,
            nano_cpus=int(limits.cpu_share() * 1e9),
            pids_limit=limits.pids,
            tmpfs=self._tmpfs_mounts(job.image, limits.tmp_size, {item["bind"] for item in volumes.values()}),
            volumes=volumes,
            log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
            device_requests=device_requests(job.gpus),
            **self._locked_down(labels),
        )

    def _read_folder(self, keeper, path: str, capacity: int) -> tuple[dict[str, bytes], list[str]]:
        """The folder's files, as a tar stream through the keeper (`docker cp`). The request is made here rather
        than with `Container.get_archive`, which keeps no handle on the response: reading may stop early (a sparse
        file, see `collect_tar_stream`), and the connection must then be closed, not left to stream on."""
        api = self.client.api
        url = f"{api.base_url}/v{api.api_version}/containers/{keeper.id}/archive"
        response = api.get(url, params={"path": f"{path}/."}, stream=True, timeout=api.timeout)
        try:
            try:
                response.raise_for_status()
            except requests.HTTPError as exc:
                raise create_api_error_from_http_exception(exc) from None
            # A tmpfs holds at most its size (in whole pages); the slack covers the rounding.
            return collect_tar_stream(response.iter_content(64 * 1024), capacity + 1024**2)
        finally:
            response.close()

    def _outcome(
        self, job: ContainerJob, container, folder: OutputFolder, timed_out: bool, wall: float, memory_peak: int | None
    ) -> JobOutcome:
        """The ended container's state and log tails, and its output folder read through the keeper."""
        container.reload()
        state = container.attrs["State"]
        stdout = container.logs(stdout=True, stderr=False, tail=2000)
        stderr = container.logs(stdout=False, stderr=True, tail=2000)
        keeper = folder.keeper.container
        files, skipped = self._read_folder(keeper, folder.path, size_bytes(job.limits.output_size))
        keeper.reload()
        if not keeper.attrs["State"].get("Running"):
            # The keeper never exits by itself and the submission cannot reach it: the daemon stopped it (a
            # shutdown, someone's `docker stop`), so the outputs may be gone and the outcome is not the submission's.
            raise HostFault(job.piece_id, "the keeper of its output folder stopped (was Docker stopped?)")
        return JobOutcome(
            exit_code=None if timed_out else int(state.get("ExitCode", -1)),
            timed_out=timed_out,
            oom_killed=bool(state.get("OOMKilled")),
            wall_s=wall,
            stdout_tail=tail_text(stdout, job.limits.log_bytes),
            stderr_tail=tail_text(stderr, job.limits.log_bytes),
            files=files,
            skipped_files=skipped,
            isolation=self.isolation(),
            memory_peak_bytes=memory_peak,
        )
