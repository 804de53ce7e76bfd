"""Runs on Ray (`--executor ray`): the same score files as the local executor, GPUs handed out by Ray (fake ones
here), a worker killed mid-piece, a cluster joined by address, requests no node can take, and Ray missing.

Real containers on the CPU images; Ray runs as a local instance with 2 CPUs and 2 fake GPUs (one per test module),
or as a head the test starts itself and stops by its process group, never with a machine-wide `ray stop`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner

from sandbox import Limits, RunOptions, run_competition
from sandbox.bundled import sample_dirs
from sandbox.cli import main
from sandbox.errors import HostFault, SandboxError
from sandbox.executor import PieceRequest
from sandbox.executor.ray_cluster import RayExecutor
from sandbox.reporting import NIPS_FILES
from sandbox.runtime.base import LABEL_PIECE, LABEL_RUN, ContainerJob, JobOutcome
from sandbox.runtime.docker import DockerRuntime, device_requests
from tests.conftest import IN_CI, make_small_dataset
from tests.submissions import BASE, FIXED_LABEL_DEFENSE, NOOP_ATTACK, write_submission

try:
    import ray
except ImportError:  # the optional extra is missing
    ray = None

pytestmark = pytest.mark.usefixtures("docker_ready")
FAST = Limits(time_per_100_images=150.0, memory="512m", cpus=1.0)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance in this process: 2 CPUs, 2 fake GPUs, a small object store; runs reuse it (and leave it)."""
    if ray is None:
        message = "Ray is not installed: pip install 'adversarial-sandbox[ray]'"
        if IN_CI:
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=2,
        object_store_memory=80 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


def _slow(script: str, seconds: float) -> str:
    return script.replace("#!/bin/sh\n", f"#!/bin/sh\nsleep {seconds}\n", 1)


def _options(tmp_path: Path, dataset: Path, root: Path, out: str, **overrides) -> RunOptions:
    settings = dict(
        attacks=(root / "attacks",),
        targeted_attacks=(root / "targeted",),
        defenses=(root / "defenses",),
        dataset=dataset,
        out=tmp_path / out,
        batch_size=10,
        attack_piece_size=10,
        defense_batch_size=10,
        jobs=2,
        limits=FAST,
        build_images=False,
    )
    settings.update(overrides)
    return RunOptions(**settings)


def _folders(root: Path) -> None:
    for name in ("attacks", "targeted", "defenses"):
        (root / name).mkdir(parents=True, exist_ok=True)


def _same_score_files(first: Path, second: Path) -> None:
    for name in NIPS_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def _cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def test_a_ray_run_gives_the_score_files_of_a_local_run(tmp_path, local_ray):
    # Shipped samples: a seeded random one (SANDBOX_SEED must travel), a torch targeted attack, a torch defense.
    # The Ray run is the CLI's own: it starts a local Ray instance of its own and stops it at the end.
    dataset = make_small_dataset(tmp_path / "data", 20)
    root = tmp_path / "submissions"
    for kind, folder, names in (
        ("attack", "attacks", ["noop", "random_noise"]),
        ("targeted_attack", "targeted", ["step_target_class"]),
        ("defense", "defenses", ["base_torch"]),
    ):
        for name in names:
            shutil.copytree(sample_dirs(kind)[0] / name, root / folder / name)
    args = ["run", "--dataset", str(dataset), "--batch-size", "10", "--attack-piece-size", "20", "--jobs", "2"]
    args += ["--memory", "1g", "--attacks", str(root / "attacks"), "--targeted-attacks", str(root / "targeted")]
    args += ["--defenses", str(root / "defenses")]

    local = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    started = time.monotonic()
    on_ray = subprocess.run(
        [sys.executable, "-m", "sandbox.cli", *args, "--out", str(tmp_path / "ray"), "--executor", "ray"],
        capture_output=True,
        text=True,
        env=_cli_env(),
        timeout=300,
    )
    assert on_ray.returncode == 0, on_ray.stdout + on_ray.stderr
    print(f"ray run (its own local instance) {time.monotonic() - started:.1f} s")

    _same_score_files(tmp_path / "local", tmp_path / "ray")
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["settings"]["executor"] == "ray" and manifest["settings"]["ray_address"] is None
    results = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert all(f["pieces_failed"] == 0 for f in results["failures"].values())


class RecordingDockerRuntime(DockerRuntime):
    """Docker on the CPU image, but a GPU piece's GPU is recorded instead of sent: this machine has no GPU. Each
    Ray worker process makes its own and appends to the same log (one line per piece, O_APPEND)."""

    def __init__(self, log: str) -> None:
        super().__init__(keep_spares=1)
        self.log = log

    def run(self, job: ContainerJob) -> JobOutcome:
        start = time.time()
        try:
            return super().run(replace(job, gpus=None))
        finally:
            line = {
                "piece": job.piece_id,
                "gpus": job.gpus,
                "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "devices": [request.device_ids for request in device_requests(job.gpus)],
                "image": job.image,
                "pid": os.getpid(),
                "start": start,
                "end": time.time(),
            }
            with open(self.log, "a") as f:
                f.write(json.dumps(line) + "\n")


def test_fake_gpus_each_gpu_piece_gets_its_own_gpu_never_shared(tmp_path, local_ray):
    dataset = make_small_dataset(tmp_path / "data", 20)
    root = tmp_path / "submissions"
    _folders(root)
    gpu = {"container_gpu": BASE}  # a "GPU image" that runs here: the CPU one
    for n in (1, 2):
        write_submission(root / "attacks", f"gpu_attack{n}", "attack", _slow(NOOP_ATTACK, 0.5), **gpu)
        write_submission(root / "defenses", f"gpu_defense{n}", "defense", _slow(FIXED_LABEL_DEFENSE, 0.5), **gpu)
    write_submission(root / "attacks", "cpu_attack", "attack", NOOP_ATTACK)
    write_submission(root / "defenses", "cpu_defense", "defense", FIXED_LABEL_DEFENSE)
    log = tmp_path / "jobs.jsonl"
    executor = RayExecutor(partial(RecordingDockerRuntime, str(log)), f"recording-{secrets.token_hex(4)}")

    result = run_competition(_options(tmp_path, dataset, root, "run", gpus="all", executor=executor))

    assert result.complete, result.results["failures"]
    jobs = [json.loads(line) for line in log.read_text().splitlines()]
    on_gpu = [job for job in jobs if "/gpu_" in job["piece"]]
    on_cpu = [job for job in jobs if "/cpu_" in job["piece"]]
    assert len(on_gpu) >= 8 and len(on_cpu) >= 4
    for job in on_gpu:
        assert job["gpus"] in ("0", "1") and job["cuda"] == job["gpus"] and job["devices"] == [[job["gpus"]]]
    for job in on_cpu:
        assert job["gpus"] is None and job["devices"] == [] and not job["cuda"]
    assert {job["gpus"] for job in on_gpu} == {"0", "1"}
    for gpu_id in ("0", "1"):
        held = sorted((job["start"], job["end"]) for job in on_gpu if job["gpus"] == gpu_id)
        assert all(later[0] >= earlier[1] for earlier, later in zip(held, held[1:], strict=False))
    # max_calls=0: GPU pieces reuse their worker processes instead of starting one per piece
    assert len({job["pid"] for job in on_gpu}) < len(on_gpu)


def _run_id(out: Path) -> str | None:
    try:
        with sqlite3.connect(out / "store.sqlite") as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'run_id'").fetchone()
    except sqlite3.OperationalError:
        return None
    return row[0] if row else None


def _ray_task_pids(function: str) -> list[int]:
    """Ray names a worker process after the task it is running (`ray::_call_piece`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(f"ray::{function}".encode()):
                pids.append(int(entry.name))
    return pids


def test_a_worker_killed_mid_piece_is_retried_and_the_scores_stay_the_same(tmp_path, local_ray):
    dataset = make_small_dataset(tmp_path / "data", 20)
    root = tmp_path / "submissions"
    _folders(root)
    write_submission(root / "attacks", "slow", "attack", _slow(NOOP_ATTACK, 4))
    write_submission(root / "defenses", "always3", "defense", FIXED_LABEL_DEFENSE)
    local = run_competition(_options(tmp_path, dataset, root, "local", attack_piece_size=20))
    options = _options(tmp_path, dataset, root, "ray", attack_piece_size=20, executor="ray")  # one attack piece

    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(result=run_competition(options)), daemon=True)
    runner.start()
    client = docker.from_env()
    deadline = time.monotonic() + 120

    def piece_containers(run_id: str) -> list:
        found = client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}, ignore_removed=True)
        return [c for c in found if c.labels.get(LABEL_PIECE, "").startswith("attack/slow/")]

    killed_container = None
    while time.monotonic() < deadline and killed_container is None:
        time.sleep(0.1)
        run_id = _run_id(tmp_path / "ray")
        running = [c for c in piece_containers(run_id) if c.status == "running"] if run_id else []
        workers = _ray_task_pids("_call_piece")
        if running and len(workers) == 1:
            os.kill(workers[0], signal.SIGKILL)
            killed_container = running[0].id
    assert killed_container, "the slow attack's piece never ran on a Ray worker"
    # The retry removes the container its killed try left (Docker, not the worker, is its parent) before it
    # starts its own.
    while time.monotonic() < deadline:
        ids = [c.id for c in piece_containers(run_id)]
        if ids and killed_container not in ids:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the retry never replaced the killed try's container")
    runner.join(timeout=120)
    assert "result" in outcome, "the run did not finish after its worker was killed"
    assert outcome["result"].complete
    _same_score_files(local.out, tmp_path / "ray")
    assert not client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})


def test_a_request_no_node_can_take_fails_before_any_piece_runs(tmp_path, local_ray):
    dataset = make_small_dataset(tmp_path / "data", 20)
    root = tmp_path / "submissions"
    _folders(root)
    write_submission(root / "attacks", "noop", "attack", NOOP_ATTACK)
    write_submission(root / "defenses", "always3", "defense", FIXED_LABEL_DEFENSE)
    started = time.monotonic()
    with pytest.raises(SandboxError) as error:
        run_competition(_options(tmp_path, dataset, root, "run", limits=replace(FAST, cpus=16.0), executor="ray"))
    assert "no node can run a piece that needs 16 CPUs" in error.value.line() and "\n" not in error.value.line()
    assert time.monotonic() - started < 30
    assert not (tmp_path / "run").exists()  # nothing ran, and the new run folder is not left behind


def _fails_on_the_host(gpu):
    raise HostFault("attack/x/00000-e16", "Docker failed the container (500)", "fix the host and resume")


def _sleeps(gpu):
    time.sleep(30)


def test_a_host_fault_on_a_worker_reaches_the_driver_as_one_line_and_stops_the_run(local_ray):
    executor = RayExecutor(DockerRuntime, "docker/runc")
    request = partial(PieceRequest, 1.0, 256 * 1024**2)
    tasks = [_fails_on_the_host] + [_sleeps] * 6  # the sleepers are cancelled, not waited for
    started = time.monotonic()
    with pytest.raises(HostFault) as error:
        list(executor.run_tasks(tasks, 2, None, None, request))
    assert error.value.line() == ("attack/x/00000-e16: Docker failed the container (500); fix the host and resume")
    assert time.monotonic() - started < 20


def _wait_for_port(port: int, head: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and head.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"`ray start --head` did not listen on port {port} within {timeout_s:g} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_run_joins_a_head_started_with_ray_start_and_token_auth(tmp_path, local_ray):
    dataset = make_small_dataset(tmp_path / "data", 20)
    root = tmp_path / "submissions"
    _folders(root)
    write_submission(root / "attacks", "noop", "attack", NOOP_ATTACK)
    write_submission(root / "defenses", "always3", "defense", FIXED_LABEL_DEFENSE)
    write_submission(root / "gpu_defenses", "gpu3", "defense", FIXED_LABEL_DEFENSE, container_gpu=BASE)
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = _cli_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--num-gpus=0"]
        + [f"--temp-dir={temp_dir}", f"--object-store-memory={80 * 1024**2}", "--disable-usage-stats"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopped below by that group, nothing else
    )
    try:
        address = f"127.0.0.1:{port}"
        _wait_for_port(port, head)
        common = ["--dataset", str(dataset), "--batch-size", "10", "--jobs", "2", "--memory", "512m"]
        common += ["--executor", "ray", "--ray-address", address, "--attacks", str(root / "attacks")]
        args = [sys.executable, "-m", "sandbox.cli", "run", *common, "--defenses", str(root / "defenses")]
        joined = subprocess.run([*args, "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env)
        assert joined.returncode == 0, joined.stdout + joined.stderr
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
        assert manifest["settings"]["ray_address"] == address
        assert head.poll() is None, "the run must leave a cluster it joined running"

        # A GPU piece on a cluster without GPUs: one line at plan time, not a run waiting forever.
        args = [sys.executable, "-m", "sandbox.cli", "run", *common, "--defenses", str(root / "gpu_defenses")]
        started = time.monotonic()
        no_gpu = subprocess.run(
            [*args, "--gpus", "all", "--out", str(tmp_path / "gpu")], capture_output=True, text=True, env=env
        )
        errors = [line for line in no_gpu.stderr.splitlines() if line.startswith("error:")]
        assert no_gpu.returncode == 1 and len(errors) == 1, no_gpu.stdout + no_gpu.stderr
        assert "no node can run a piece that needs 1 GPU" in errors[0] and not (tmp_path / "gpu").exists()
        assert time.monotonic() - started < 60
    finally:
        _signal_group(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:  # `ray start --block` may leave its GCS server waiting on SIGTERM
            pass
        _signal_group(head.pid, signal.SIGKILL)  # the group: the head and every process it started, nothing else
        head.wait()
        _wait_until_gone(head.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _signal_group(group: int, sig: signal.Signals) -> None:
    """Signals the head's process group; a group whose every process has already exited is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


def _wait_until_gone(group: int, timeout_s: float = 10.0) -> None:
    """The group's other processes (Ray's) die a moment after its leader; until then they may write logs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def test_without_ray_the_ray_executor_says_how_to_install_it(tmp_path):
    code = "import sys; sys.modules['ray'] = None; from sandbox.cli import main; main()"
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", code, "run", "--executor", "ray", "--out", str(out)],
        capture_output=True,
        text=True,
        env=_cli_env(),
        timeout=60,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stdout + result.stderr
    assert "pip install 'adversarial-sandbox[ray]'" in errors[0] and not out.exists()


def test_an_address_where_nothing_answers_fails_at_once_with_one_line(tmp_path, local_ray):
    out = tmp_path / "run"
    args = ["run", "--executor", "ray", "--ray-address", f"127.0.0.1:{_free_port()}", "--out", str(out)]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "sandbox.cli", *args], capture_output=True, text=True, env=_cli_env()
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stdout + result.stderr
    assert "nothing answers there" in errors[0] and not out.exists()
    assert time.monotonic() - started < 30  # Ray alone retries such an address for minutes
