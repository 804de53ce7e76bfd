"""The local executor: pieces on `--jobs` threads, one GPU slot each, results handed back as they finish, and the
first exception stopping what has not started."""

from __future__ import annotations

import threading
import time

import pytest

from sandbox.executor import run_tasks
from sandbox.executor.local import gpu_slots

WAIT = 10.0  # seconds any test waits for threads that should meet at once; it fails instead of hanging


@pytest.mark.parametrize(
    ("gpus", "jobs", "expected"),
    [
        (None, 3, [None, None, None]),
        ("", 2, [None, None]),
        ("all", 2, ["all", "all"]),
        ("0,1", 4, ["0", "1"]),  # one piece per GPU, whatever --jobs says
        ("3", 1, ["3"]),
    ],
)
def test_gpu_slots(gpus, jobs, expected):
    assert gpu_slots(gpus, jobs) == expected


def test_no_tasks_yields_nothing():
    assert list(run_tasks([], jobs=4)) == []


def test_one_job_runs_the_tasks_in_order_one_at_a_time():
    running, overlap, order = [], [], []
    lock = threading.Lock()

    def task(n):
        def call(gpu):
            with lock:
                running.append(n)
                overlap.append(len(running))
            time.sleep(0.01)
            with lock:
                running.remove(n)
                order.append(n)
            return n * 10

        return call

    assert list(run_tasks([task(n) for n in range(6)], jobs=1)) == [0, 10, 20, 30, 40, 50]
    assert order == list(range(6)) and max(overlap) == 1


def test_results_come_back_as_tasks_finish_not_in_task_order():
    release = threading.Event()

    def slow(gpu):
        assert release.wait(WAIT)  # finishes only once the caller holds the fast one's result
        return "slow"

    results = run_tasks([slow, lambda gpu: "fast"], jobs=2)
    assert next(results) == "fast"
    release.set()
    assert list(results) == ["slow"]


@pytest.mark.parametrize("jobs", [2, 3])
def test_jobs_tasks_run_at_once_and_never_more(jobs):
    barrier = threading.Barrier(jobs, timeout=WAIT)  # breaks (and the test fails) unless `jobs` tasks meet
    lock = threading.Lock()
    running = [0]
    peak = [0]

    def task(gpu):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        barrier.wait()
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return gpu

    assert list(run_tasks([task] * (3 * jobs), jobs=jobs)) == [None] * (3 * jobs)
    assert peak[0] == jobs


def test_each_gpu_runs_one_piece_at_a_time():
    barrier = threading.Barrier(2, timeout=WAIT)
    lock = threading.Lock()
    busy: set[str] = set()
    clashes = []

    def task(gpu):
        with lock:
            clashes.append(gpu in busy)
            busy.add(gpu)
        barrier.wait()  # two pieces hold their GPUs at the same moment
        with lock:
            busy.discard(gpu)
        return gpu

    # --jobs 8 with two GPUs: two pieces at once, never two on one GPU.
    used = list(run_tasks([task] * 6, jobs=8, gpus="0,1"))
    assert sorted(used) == ["0", "0", "0", "1", "1", "1"] and not any(clashes)


def test_all_gpus_are_given_to_every_piece():
    assert list(run_tasks([lambda gpu: gpu] * 3, jobs=2, gpus="all")) == ["all"] * 3


def test_the_first_exception_is_raised_and_stops_what_has_not_started():
    started = []

    def task(n):
        def call(gpu):
            started.append(n)
            if n == 1:
                raise ValueError("piece 1 failed")
            return n

        return call

    results = []
    with pytest.raises(ValueError, match="piece 1 failed"):
        for result in run_tasks([task(n) for n in range(10)], jobs=1):
            results.append(result)
    time.sleep(0.1)  # a task that had started would show by now
    # Piece 2 was already queued when piece 1 failed, but a failed run starts nothing new.
    assert started == [0, 1] and results == [0]


def test_cpu_pieces_run_beside_gpu_pieces_each_in_its_own_workers():
    barrier = threading.Barrier(3, timeout=WAIT)  # one GPU piece and two CPU pieces at the same moment

    def task(gpu):
        barrier.wait()
        return gpu, threading.current_thread().name

    results = list(run_tasks([task] * 3, jobs=2, gpus="0", wants_gpu=[False, True, False]))
    assert sorted(gpu for gpu, _ in results if gpu) == ["0"]
    workers = {gpu: name.rsplit("_", 1)[0] for gpu, name in results}
    assert workers == {"0": "piece_gpu", None: "piece"}  # the worker names the report's timeline shows


def test_without_gpus_no_task_gets_one_whatever_it_wants():
    assert list(run_tasks([lambda gpu: gpu] * 2, jobs=1, wants_gpu=[True, True])) == [None, None]


def test_a_failure_in_one_lane_stops_the_other():
    cpu_started, gpu_failed = threading.Event(), threading.Event()
    started = []

    def gpu_task(gpu):
        started.append("gpu")
        assert cpu_started.wait(WAIT)
        gpu_failed.set()
        raise RuntimeError("gpu piece failed")

    def cpu_task(gpu):
        started.append("cpu")
        cpu_started.set()
        assert gpu_failed.wait(WAIT)
        time.sleep(0.05)
        return "cpu"

    with pytest.raises(RuntimeError, match="gpu piece failed"):
        list(run_tasks([gpu_task, cpu_task, cpu_task, cpu_task], jobs=1, gpus="0", wants_gpu=[True] + [False] * 3))
    time.sleep(0.1)
    assert sorted(started) == ["cpu", "gpu"]  # the CPU piece already running finishes; no other starts


def test_wants_gpu_must_say_it_for_every_task():
    with pytest.raises(ValueError, match="wants_gpu has 1 entries for 2 tasks"):
        list(run_tasks([lambda gpu: gpu] * 2, jobs=1, gpus="0", wants_gpu=[True]))


def test_stopping_early_starts_nothing_more():
    started = []

    def task(n):
        def call(gpu):
            started.append(n)
            return n

        return call

    for result in run_tasks([task(n) for n in range(20)], jobs=1):
        if result == 0:
            break
    time.sleep(0.1)
    assert set(started) <= {0, 1, 2}


def test_a_ray_worker_that_finds_docker_gone_waits_for_it_instead_of_crashing(tmp_path):
    """Before each try a cluster worker removes an earlier try's container; with the daemon gone (a restart) that
    is the runtime being unavailable, which the run waits for (--docker-wait), not a traceback."""
    import docker

    from sandbox.errors import RuntimeUnavailable
    from sandbox.executor.ray_cluster import _remove_earlier_tries
    from sandbox.runtime.base import ContainerJob, Limits

    class DaemonGone:  # what the worker's Docker runtime holds: a client, here of a daemon that does not answer
        client = docker.DockerClient(base_url=f"unix://{tmp_path}/no-daemon.sock", version="1.41")

    job = ContainerJob("run", "attack/x/0", "img", "/code", "run.sh", "/in", "/output_images", (), {}, 60.0, Limits())
    with pytest.raises(RuntimeUnavailable, match="Docker stopped answering"):
        _remove_earlier_tries(DaemonGone(), job)
