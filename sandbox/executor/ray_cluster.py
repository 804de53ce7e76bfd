"""Pieces as Ray tasks, on a local Ray instance or across the machines of a Ray cluster (`--executor ray`).

The piece functions are the local executor's; what changes is where they run. A task carries its piece, its
submission and the run's context to a Ray worker, where the runtime is rebuilt once per worker process (a Docker
client cannot travel); inputs and outputs go through the run folder, which must be at the same path on every
machine (docs/scaling.md). Results come back to the driver, whose own thread stores them, so a resume works as
locally. Ray retries a task whose worker or machine died; the retry first removes the container its earlier try
left (found by the run and piece labels).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sandbox.errors import HostFault, RuntimeUnavailable, SandboxError
from sandbox.executor.base import Messages, PieceRequest, Task, split_lanes
from sandbox.runtime.base import LABEL_PIECE, LABEL_RUN, ContainerJob, JobOutcome, Limits, Runtime

T = TypeVar("T")
INSTALL = "pip install 'adversarial-sandbox[ray]'"
WORKER_TRIES = 3  # a piece whose worker or machine dies is tried this many times in all, then the run stops


def import_ray() -> Any:
    """Ray, or the one line that says how to install it (it is an optional extra)."""
    try:
        import ray
    except ImportError:
        raise SandboxError("--executor ray", "Ray is not installed", f"install it with `{INSTALL}`") from None
    return ray


_RUNTIMES: dict[str, Runtime] = {}  # one per Ray worker process and runtime kind, kept between its pieces
_RUNTIMES_LOCK = threading.Lock()


def _process_runtime(key: str, factory: Callable[[], Runtime]) -> Runtime:
    with _RUNTIMES_LOCK:
        runtime = _RUNTIMES.get(key)
        if runtime is None:
            runtime = _RUNTIMES[key] = factory()
        return runtime


@dataclass(frozen=True)
class WorkerRuntime:
    """A runtime that can be shipped to a Ray worker: it holds only how to make one, and makes it there once.

    GPU pieces get one made by `gpu_factory` (which checks that this machine's Docker can pass GPUs), others one
    made by `factory`: a machine without GPUs never runs a GPU piece, and needs no GPU runtime."""

    key: str
    factory: Callable[[], Runtime]
    gpu_factory: Callable[[], Runtime] | None = None
    name: str = "docker"

    def _runtime(self, gpu: bool = False) -> Runtime:
        if gpu and self.gpu_factory is not None:
            return _process_runtime(f"{self.key}/gpu", self.gpu_factory)
        return _process_runtime(self.key, self.factory)

    def isolation(self) -> str:
        return self._runtime().isolation()

    def check(self, images: list[str]) -> dict[str, str]:
        return self._runtime().check(images)

    def run(self, job: ContainerJob) -> JobOutcome:
        runtime = self._runtime(gpu=job.gpus is not None)
        _remove_earlier_tries(runtime, job)
        return runtime.run(job)

    def wait_until_available(self, timeout_s: float) -> bool:
        """Also where this worker process has no runtime yet because Docker did not answer when it made one."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                runtime = self._runtime()
                break
            except RuntimeUnavailable:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(2.0)
        return runtime.wait_until_available(max(0.0, deadline - time.monotonic()))

    def cleanup_run(self, run_id: str, settle_s: float = 10.0) -> int:
        return self._runtime().cleanup_run(run_id, settle_s)

    def prepare_run(self, run_id: str, limits: Limits) -> None:
        """Nothing: each worker process's runtime prepares its next output folder while it runs a piece."""

    def close(self) -> None:
        """Kept: the worker process runs the next piece with it (`cleanup_run` removes what a run left)."""


def _remove_earlier_tries(runtime: Runtime, job: ContainerJob) -> None:
    """A try whose worker was killed left its container running (Docker, not the worker, is its parent)."""
    client = getattr(runtime, "client", None)  # the Docker runtime's client; the process runtime has none
    if client is None:
        return
    import requests
    from docker.errors import DockerException, NotFound

    from sandbox.runtime.docker import DOCKER_HELP

    labels = [f"{LABEL_RUN}={job.run_id}", f"{LABEL_PIECE}={job.piece_id}"]
    try:
        for container in client.containers.list(all=True, filters={"label": labels}, ignore_removed=True):
            try:
                container.remove(force=True, v=True)
            except NotFound:
                pass
    except requests.RequestException as exc:  # the daemon went away: waited for, as inside `DockerRuntime.run`
        raise RuntimeUnavailable(job.piece_id, f"Docker stopped answering ({exc})", DOCKER_HELP) from None
    except DockerException as exc:
        raise HostFault(job.piece_id, f"could not remove its earlier try's container ({exc})") from None


class _WorkerLog:
    """A piece's warnings on a Ray worker: written to the worker's stderr, which Ray shows on the driver."""

    def message(self, text: str) -> None:
        print(f"[{socket.gethostname()}] {text}", file=sys.stderr, flush=True)

    def warning(self, text: str) -> None:
        print(f"[{socket.gethostname()}] warning: {text}", file=sys.stderr, flush=True)


def _call_piece(task: Task[T], on_gpu: bool) -> T:
    """Runs on the worker: the GPU Ray gave this task is the one the container asks Docker for."""
    import ray

    gpu = (",".join(str(i) for i in ray.get_gpu_ids()) or None) if on_gpu else None
    # The timeline lays pieces out per worker; locally that is the thread's name.
    threading.current_thread().name = f"ray_{socket.gethostname()}_{os.getpid()}" + (f"_gpu{gpu}" if gpu else "")
    return task(gpu)  # a SandboxError pickles with its fields (errors.py) and reaches the driver as itself


def _cleanup_node(runtime: WorkerRuntime, run_id: str, timeout_s: float = 60.0) -> int:
    """Removes the run's containers and volumes on this machine until none is left. Other worker processes here
    may still be removing their last piece's: the runtime waits for those (`DockerRuntime.cleanup_run`)."""
    return runtime._runtime().cleanup_run(run_id, settle_s=timeout_s)


@dataclass
class _Lane:
    """GPU or CPU tasks: at most `window` submitted at once, so neither kind waits behind the other and the
    driver never holds thousands of pickled tasks in Ray's queues."""

    todo: list
    options: dict
    on_gpu: bool
    window: int
    in_flight: int = 0


@dataclass
class RayExecutor:
    """Runs pieces as Ray tasks. `address`: a cluster to join (`ray start --head` prints it); None starts a
    local Ray instance for the run and stops it after. When the caller has already called `ray.init`, that
    connection is used and left open. `runtime_factory` makes the runtime on each worker."""

    runtime_factory: Callable[[], Runtime]
    runtime_key: str
    address: str | None = None
    init_options: dict = field(default_factory=dict)
    gpu_runtime_factory: Callable[[], Runtime] | None = None
    name: str = "ray"
    pieces_run_here: bool = False
    _started: bool = False
    _connected: bool = False

    def start(self) -> None:
        self.connect()

    def connect(self) -> Any:
        ray = import_ray()
        if not self._connected:
            if not ray.is_initialized():
                if self.address:
                    _check_reachable(self.address)  # Ray itself retries an unreachable address for minutes
                try:
                    ray.init(
                        address=self.address or "local",  # None would join any cluster `ray start` left here
                        include_dashboard=False,
                        **self.init_options,
                    )
                except (ConnectionError, ValueError, RuntimeError) as exc:
                    where = f"Ray cluster {self.address}" if self.address else "local Ray instance"
                    fix = (
                        "check the address `ray start --head` printed, that its port is reachable, and the token "
                        "(RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH; docs/scaling.md)"
                    )
                    raise SandboxError(where, f"could not connect ({type(exc).__name__}: {exc})", fix) from None
                self._started = True
            self._connected = True
        return ray

    def for_pieces(self, runtime: Any, messages: Messages) -> tuple[Any, Messages]:
        shipped = WorkerRuntime(
            self.runtime_key, self.runtime_factory, self.gpu_runtime_factory, getattr(runtime, "name", "docker")
        )
        return shipped, _WorkerLog()

    def _nodes(self) -> list[dict]:
        return [node["Resources"] for node in self.connect().nodes() if node.get("Alive")]

    def check(self, requests: Sequence[PieceRequest]) -> None:
        nodes = self._nodes()
        for request in requests:
            if not any(_fits(node, request) for node in nodes):
                largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
                has = (
                    f"{len(nodes)} nodes, the largest with {largest.get('CPU', 0):g} CPUs, {largest.get('GPU', 0):g} "
                    f"GPUs and {largest.get('memory', 0) / 1024**3:.1f} GiB"
                )
                fix = (
                    "start Ray on a GPU machine (`ray start --address ... --num-gpus N`) or leave out --gpus"
                    if request.gpu
                    else "lower --cpus or --memory, or add a larger machine to the cluster"
                )
                raise SandboxError(
                    f"Ray cluster {self.address or '(local)'}",
                    f"no node can run a piece that needs {request.describe()} ({has})",
                    fix,
                )

    def _window(self, request: PieceRequest) -> int:
        """Twice the pieces the cluster can run at once, as the local executor queues two per worker."""
        slots = 0
        for node in self._nodes():
            if not _fits(node, request):
                continue
            by_memory = node.get("memory", 0) // max(1, request.memory_bytes)
            by_unit = node.get("GPU", 0) if request.gpu else node.get("CPU", 0) // max(request.cpus, 1e-9)
            slots += int(min(by_memory, by_unit))
        return max(2, 2 * slots)

    def run_tasks(
        self,
        tasks: Sequence[Task[T]],
        jobs: int,
        gpus: str | None,
        wants_gpu: Sequence[bool] | None,
        request: Callable[[bool], PieceRequest],
    ) -> Iterator[T]:
        """`jobs` is the local executor's; here each machine runs as many pieces as its resources hold."""
        gpu_tasks, cpu_tasks = split_lanes(tasks, gpus, wants_gpu)
        if not tasks:
            return
        ray = self.connect()
        lanes = []
        for lane_tasks, on_gpu in ((gpu_tasks, True), (cpu_tasks, False)):
            if lane_tasks:
                req = request(on_gpu)
                self.check([req])
                options = {
                    "num_cpus": 0 if on_gpu else req.cpus,
                    "num_gpus": 1 if on_gpu else 0,
                    "memory": req.memory_bytes,
                    "max_retries": WORKER_TRIES - 1,  # a worker or machine that died; never the piece's own error
                    "retry_exceptions": False,
                }
                lanes.append(_Lane(lane_tasks[::-1], options, on_gpu, self._window(req)))
        # max_calls=0: GPU tasks would otherwise start a fresh worker process per task (~0.4 s each, and they pile
        # up); Ray accepts it only here, not in `.options()`.
        remote = ray.remote(max_calls=0)(_call_piece)
        pending: dict[Any, _Lane] = {}
        try:
            while pending or any(lane.todo for lane in lanes):
                for lane in lanes:
                    while lane.todo and lane.in_flight < lane.window:
                        pending[remote.options(**lane.options).remote(lane.todo.pop(), lane.on_gpu)] = lane
                        lane.in_flight += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    pending.pop(ref).in_flight -= 1
                    yield _result(ray, ref)
        finally:
            for ref in pending:  # a failed run starts nothing new; a running piece is interrupted
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001, S110 - best effort while the run stops; cleanup_run follows
                    pass

    def cleanup_run(self, run_id: str) -> int:
        """Removes the run's containers on every node of the cluster (the driver's runtime does its own)."""
        if not self._connected:
            return 0
        ray = self.connect()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        runtime = WorkerRuntime(self.runtime_key, self.runtime_factory)
        remote = ray.remote(_cleanup_node)
        refs = [
            remote.options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(runtime, run_id)
            for node in ray.nodes()
            if node.get("Alive")
        ]
        try:
            return sum(ray.get(refs, timeout=180))
        except ray.exceptions.RayError as exc:
            raise HostFault("Ray cluster", f"could not remove the run's containers on every node ({exc})") from None

    def close(self) -> None:
        """Stops the local Ray instance this run started; a joined cluster, or the caller's Ray, is left running."""
        if self._started:
            import_ray().shutdown()
        self._started = self._connected = False


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise SandboxError(
            f"--ray-address {address}",
            f"nothing answers there ({type(exc).__name__}: {exc})",
            "give the head's IP:port as `ray start --head` printed it (port 6379 by default), and check that it runs",
        ) from None


def _fits(node: dict, request: PieceRequest) -> bool:
    if node.get("memory", 0) < request.memory_bytes:
        return False
    return node.get("GPU", 0) >= 1 if request.gpu else node.get("CPU", 0) >= request.cpus


def _result(ray: Any, ref: Any) -> Any:
    """The piece's result; its own exception as raised on the worker; a worker that kept dying as a host fault."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, BaseException):
            raise exc.cause from None
        raise
    except ray.exceptions.RayError as exc:
        raise HostFault(
            "Ray cluster",
            f"a piece's worker died {WORKER_TRIES} times in a row ({type(exc).__name__})",
            "check the workers' machines (`ray status`, memory, Docker) and resume the run folder",
        ) from None
