"""GPU scheduling in the local executor, without a GPU or Docker: real threads, fake GPU ids.

With `--gpus 0,1` a GPU piece holds exactly one free GPU id, one piece per id at a time, while CPU pieces (no GPU
image) run next to them, up to `--jobs` at once: neither kind waits for the other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from sandbox.executor import run_tasks
from sandbox.runtime.base import ContainerJob, JobOutcome
from sandbox.runtime.docker import device_requests
from sandbox.runtime.process import ProcessRuntime

WAIT = 10.0  # seconds any test waits for threads that should meet; it fails instead of hanging


class Recorder:
    """Each call's kind, GPU id, thread and (start, end); how many of each kind ran at once, at most."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str | None, str, float, float]] = []
        self.running = {"gpu": 0, "cpu": 0}
        self.peak = {"gpu": 0, "cpu": 0}
        self.busy_ids: set[str | None] = set()
        self.clashes: list[str | None] = []  # an id handed out while another task still held it

    def task(self, kind: str, meet: Callable[[], object] = lambda: None, result: object = None):
        def call(gpu: str | None) -> tuple[str, str | None, object]:
            start = time.perf_counter()
            with self.lock:
                self.running[kind] += 1
                self.peak[kind] = max(self.peak[kind], self.running[kind])
                if kind == "gpu" and gpu != "all":
                    if gpu in self.busy_ids:
                        self.clashes.append(gpu)
                    self.busy_ids.add(gpu)
            try:
                meet()
                time.sleep(0.005)  # gives a wrongly shared id the chance to show as an overlap
            finally:
                with self.lock:
                    self.running[kind] -= 1
                    self.busy_ids.discard(gpu)
                    self.calls.append((kind, gpu, threading.current_thread().name, start, time.perf_counter()))
            return kind, gpu, result

        return call


def _overlaps(intervals: list[tuple[float, float]]) -> bool:
    intervals = sorted(intervals)
    return any(later[0] < earlier[1] for earlier, later in zip(intervals, intervals[1:], strict=False))


def test_gpu_ids_are_never_shared_and_cpu_tasks_run_alongside():
    # Two GPUs and --jobs 3: every round, both GPUs and all three CPU workers meet at once.
    barrier = threading.Barrier(5, timeout=WAIT)
    rec = Recorder()
    tasks, wants = [], []
    for n in range(10):  # 4 GPU tasks and 6 CPU tasks: two full rounds of 2 + 3
        gpu = n % 5 < 2
        tasks.append(rec.task("gpu" if gpu else "cpu", barrier.wait, n))
        wants.append(gpu)

    results = list(run_tasks(tasks, jobs=3, gpus="0,1", wants_gpu=wants))

    assert sorted(r[2] for r in results) == list(range(10))  # every result, each once
    assert {(kind, gpu) for kind, gpu, _ in results} == {("gpu", "0"), ("gpu", "1"), ("cpu", None)}
    assert rec.peak == {"gpu": 2, "cpu": 3} and not rec.clashes
    for gpu_id in ("0", "1"):
        held = [(start, end) for kind, gpu, _, start, end in rec.calls if kind == "gpu" and gpu == gpu_id]
        assert held and not _overlaps(held), f"GPU {gpu_id} ran two pieces at once"


def test_many_gpu_tasks_get_one_free_id_each():
    rec = Recorder()
    results = list(run_tasks([rec.task("gpu") for _ in range(30)], jobs=2, gpus="0,1", wants_gpu=[True] * 30))
    assert len(results) == 30 and {gpu for _, gpu, _ in results} == {"0", "1"}
    assert rec.peak["gpu"] <= 2 and not rec.clashes
    for gpu_id in ("0", "1"):
        assert not _overlaps([(s, e) for _, gpu, _, s, e in rec.calls if gpu == gpu_id])


def test_cpu_tasks_do_not_wait_for_gpu_tasks():
    # The GPU piece finishes only once every CPU piece has: with --jobs 1 and one GPU, the CPU pieces queued
    # after it must still run on their own worker.
    cpu_done = threading.Event()
    count = [0]

    def gpu_task(gpu):
        assert cpu_done.wait(WAIT), "CPU pieces waited for the GPU piece"
        return gpu

    def cpu_task(gpu):
        count[0] += 1
        if count[0] == 4:
            cpu_done.set()
        return gpu

    results = list(run_tasks([gpu_task] + [cpu_task] * 4, jobs=1, gpus="0", wants_gpu=[True] + [False] * 4))
    assert sorted(results, key=str) == ["0", None, None, None, None]


def test_gpu_tasks_do_not_wait_for_cpu_tasks():
    # The CPU piece finishes only once every GPU piece has, although it comes first and --jobs is 1.
    gpu_done = threading.Event()
    count = [0]

    def cpu_task(gpu):
        assert gpu_done.wait(WAIT), "GPU pieces waited for the CPU piece"
        return gpu

    def gpu_task(gpu):
        count[0] += 1  # one GPU: these never run at once
        if count[0] == 4:
            gpu_done.set()
        return gpu

    results = list(run_tasks([cpu_task] + [gpu_task] * 4, jobs=1, gpus="7", wants_gpu=[False] + [True] * 4))
    assert sorted(results, key=str) == ["7", "7", "7", "7", None]


def test_all_gives_every_gpu_task_all_gpus_up_to_jobs_at_once():
    barrier = threading.Barrier(4, timeout=WAIT)  # 2 GPU pieces (--jobs 2) and 2 CPU pieces at once
    rec = Recorder()
    wants = [True, False] * 4
    tasks = [rec.task("gpu" if gpu else "cpu", barrier.wait) for gpu in wants]
    results = list(run_tasks(tasks, jobs=2, gpus="all", wants_gpu=wants))
    assert sorted(results, key=str) == [("cpu", None, None)] * 4 + [("gpu", "all", None)] * 4
    assert rec.peak == {"gpu": 2, "cpu": 2}


def test_without_gpus_every_task_is_a_cpu_task():
    rec = Recorder()
    tasks = [rec.task("cpu") for _ in range(8)]
    results = list(run_tasks(tasks, jobs=2, gpus=None, wants_gpu=[True, False] * 4))
    assert [gpu for _, gpu, _ in results] == [None] * 8 and rec.peak["cpu"] <= 2


def test_gpu_and_cpu_workers_have_their_own_names():
    # The timeline lays pieces out per worker (the thread name): a GPU worker is never also a CPU worker.
    names: dict[str, set[str]] = {"gpu": set(), "cpu": set()}

    def task(kind):
        def call(gpu):
            names[kind].add(threading.current_thread().name)

        return call

    wants = [True, False] * 6
    list(run_tasks([task("gpu" if w else "cpu") for w in wants], jobs=2, gpus="0,1", wants_gpu=wants))
    assert names["cpu"] and names["cpu"] <= {"piece_0", "piece_1"}
    assert names["gpu"] and names["gpu"] <= {"piece_gpu_0", "piece_gpu_1"}


@pytest.mark.parametrize("failing", ["gpu", "cpu"])
def test_the_first_exception_stops_both_kinds(failing):
    # One piece of each kind is running when the other kind fails: the error comes back at once, and after it
    # no piece of either kind starts.
    caught, other_started = threading.Event(), threading.Event()
    started: list[str] = []
    other = "cpu" if failing == "gpu" else "gpu"

    def task(kind, n):
        def call(gpu):
            started.append(f"{kind}{n}")
            if kind == failing and n == 0:
                assert other_started.wait(WAIT)
                raise ValueError(f"{kind} piece failed")
            if kind == other and n == 0:
                other_started.set()
                assert caught.wait(WAIT)  # still running when the caller gets the error
            return kind, n

        return call

    wants = [True] * 5 + [False] * 5
    tasks = [task("gpu" if w else "cpu", n % 5) for n, w in enumerate(wants)]
    with pytest.raises(ValueError, match=f"{failing} piece failed"):
        list(run_tasks(tasks, jobs=1, gpus="0", wants_gpu=wants))
    caught.set()
    time.sleep(0.1)  # a piece that had started would show by now
    assert sorted(started) == sorted([f"{failing}0", f"{other}0"])


def test_results_come_back_complete_as_they_finish():
    release = threading.Event()

    def slow_gpu(gpu):
        assert release.wait(WAIT)  # finishes only once the caller holds the CPU results
        return "gpu"

    results = run_tasks(
        [slow_gpu] + [lambda gpu, n=n: n for n in range(5)], jobs=2, gpus="0", wants_gpu=[True] + [False] * 5
    )
    assert sorted(next(results) for _ in range(5)) == [0, 1, 2, 3, 4]
    release.set()
    assert list(results) == ["gpu"]


def test_wants_gpu_must_match_the_tasks():
    with pytest.raises(ValueError, match="2 entries for 3 tasks"):
        list(run_tasks([lambda gpu: gpu] * 3, jobs=1, gpus="0", wants_gpu=[True, False]))


def test_device_requests_a_gpu_piece_sends():
    # What each piece passes Docker (`device_requests=` in `containers.create`), for the slot it was given.
    wants = [True, False] * 4
    requests = list(run_tasks([device_requests] * 8, jobs=2, gpus="0,1", wants_gpu=wants))
    gpu_requests = [r for r in requests if r]
    assert len(gpu_requests) == 4 and requests.count([]) == 4  # a CPU piece asks for no device
    for (request,) in gpu_requests:
        assert request.device_ids in (["0"], ["1"]) and request.capabilities == [["gpu"]]
        assert request.count == 0  # Docker's default: the ids say which GPUs

    (one,) = device_requests("0")
    assert one.device_ids == ["0"] and one.capabilities == [["gpu"]]
    (every,) = device_requests("all")
    assert every.count == -1 and every.device_ids == [] and every.capabilities == [["gpu"]]
    assert device_requests(None) == []


class RecordingRuntime(ProcessRuntime):
    """The process runtime, but it only records each job: no GPU container can start on this machine."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[ContainerJob] = []

    def run(self, job: ContainerJob) -> JobOutcome:
        self.jobs.append(job)
        return JobOutcome(0, False, False, 0.0, "", "", files={"result.csv": b""}, isolation="recorded")


def test_a_gpu_piece_runs_the_gpu_image_with_its_gpu_and_a_cpu_piece_the_cpu_image(tmp_path):
    from sandbox.bundled import default_dataset_dir
    from sandbox.dataset import load_dataset
    from sandbox.pieces import RunContext, execute_defense
    from sandbox.runtime.base import Limits
    from sandbox.submission import load_submission
    from tests.submissions import FIXED_LABEL_DEFENSE, write_submission

    gpu_sub = load_submission(write_submission(tmp_path, "g", "defense", FIXED_LABEL_DEFENSE, container_gpu="x:gpu"))
    cpu_sub = load_submission(write_submission(tmp_path, "c", "defense", FIXED_LABEL_DEFENSE))
    runtime = RecordingRuntime()
    dataset = load_dataset(default_dataset_dir())
    ctx = RunContext("r", tmp_path / "run", "secret", Limits(cpus=1.0), dataset, runtime, use_gpu=True)
    inputs = {"a": b"\x89PNG"}
    execute_defense("defense/g/1", 1, gpu_sub, ctx, inputs, gpu="1")
    execute_defense("defense/c/1", 1, cpu_sub, ctx, inputs, gpu=None)
    gpu_job, cpu_job = runtime.jobs
    assert (gpu_job.image, gpu_job.gpus) == ("x:gpu", "1")
    assert [(r.device_ids, r.capabilities) for r in device_requests(gpu_job.gpus)] == [(["1"], [["gpu"]])]
    assert (cpu_job.image, cpu_job.gpus) == (cpu_sub.metadata.container, None)
    assert device_requests(cpu_job.gpus) == []


@pytest.mark.parametrize("gpus", ["0,1", "all"])
def test_with_fake_gpu_ids_each_piece_gets_its_image_and_device_requests(tmp_path, gpus):
    # A run's defense pieces through the executor as `competition` schedules them (a piece wants a GPU when its
    # submission names a container_gpu): GPU pieces run the GPU image with one id each (or all GPUs), CPU pieces
    # the CPU image with no device at all. The runtime only records: no GPU container can start here.
    from sandbox.bundled import default_dataset_dir
    from sandbox.dataset import load_dataset
    from sandbox.image_names import image_tag
    from sandbox.pieces import RunContext, execute_defense
    from sandbox.runtime.base import Limits
    from sandbox.submission import load_submission
    from tests.submissions import FIXED_LABEL_DEFENSE, write_submission

    torch_cpu, torch_gpu = image_tag("torch-cpu"), image_tag("torch-gpu")
    on_gpu = load_submission(
        write_submission(tmp_path, "g", "defense", FIXED_LABEL_DEFENSE, image=torch_cpu, container_gpu=torch_gpu)
    )
    cpu_only = load_submission(write_submission(tmp_path, "c", "defense", FIXED_LABEL_DEFENSE))
    assert (on_gpu.image(True), on_gpu.image(False)) == (torch_gpu, torch_cpu)
    assert cpu_only.image(True) == cpu_only.image(False) == cpu_only.metadata.container
    runtime = RecordingRuntime()
    ctx = RunContext("r", tmp_path / "run", "s", Limits(cpus=1.0), load_dataset(default_dataset_dir()), runtime, True)
    subs = [on_gpu, cpu_only] * 4

    def piece(n, sub):
        return lambda gpu: execute_defense(f"defense/{sub.id}/{n}", n, sub, ctx, {"a": b"\x89PNG"}, gpu=gpu)

    wants = [bool(sub.metadata.container_gpu) for sub in subs]
    list(run_tasks([piece(n, sub) for n, sub in enumerate(subs)], jobs=2, gpus=gpus, wants_gpu=wants))

    assert len(runtime.jobs) == 8
    for job in runtime.jobs:
        if job.image == torch_gpu:
            assert job.gpus in (["0", "1"] if gpus == "0,1" else ["all"])
            (request,) = device_requests(job.gpus)
            if gpus == "all":
                assert request.count == -1 and request.device_ids == []
            else:
                assert request.device_ids == [job.gpus] and request.count == 0
            assert request.capabilities == [["gpu"]]
        else:
            assert job.image == cpu_only.metadata.container and job.gpus is None and device_requests(None) == []
    assert sum(job.image == torch_gpu for job in runtime.jobs) == 4
