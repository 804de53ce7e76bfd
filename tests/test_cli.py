"""The CLI as users run it: resume after SIGKILL, settings checks, Docker missing, usage errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner

from sandbox.bundled import sample_dirs
from sandbox.cli import main
from sandbox.runtime.base import LABEL_RUN
from tests.conftest import make_small_dataset
from tests.submissions import NOOP_ATTACK, write_submission


def test_docker_unreachable_is_one_line_and_exit_1(tmp_path):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    result = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "run")], env=env)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Docker is not reachable" in errors[0] and "install-docker.sh" in errors[0]
    assert "sandbox doctor" in result.output
    assert not (tmp_path / "run").exists(), "a run that never started leaves no run folder behind"


def test_a_run_that_fails_to_start_leaves_no_run_folder(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--dataset", str(tmp_path / "no-such-data"), "--out", str(out)])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no such data set folder" in errors[0]
    assert not out.exists()


def test_usage_errors_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["run", "--epsilon", "300", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "0..255" in result.output


def _samples(dest: Path, kind: str, names: list[str]) -> Path:
    """A few shipped samples: randomized (SANDBOX_SEED), white-box torch, targeted, and a torch defense."""
    for name in names:
        shutil.copytree(sample_dirs(kind)[0] / name, dest / name)
    return dest


def _run_args(dataset: Path, root: Path, out: Path) -> list[str]:
    return [
        "run",
        "--dataset",
        str(dataset),
        "--attacks",
        str(root / "attacks"),
        "--targeted-attacks",
        str(root / "targeted"),
        "--defenses",
        str(root / "defenses"),
        "--batch-size",
        "10",
        "--attack-piece-size",
        "10",
        "--defense-batch-size",
        "150",
        "--out",
        str(out),
    ]


def _labelled_containers(client: docker.DockerClient, run_id: str) -> list:
    return client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}, ignore_removed=True)


@pytest.mark.usefixtures("docker_ready")
def test_resume_after_sigkill_gives_identical_scores(tmp_path):
    dataset = make_small_dataset(tmp_path / "data", 40)
    root = tmp_path / "submissions"
    attacks = _samples(root / "attacks", "attack", ["noop", "random_noise", "fgsm"])
    _samples(root / "targeted", "targeted_attack", ["step_target_class"])
    _samples(root / "defenses", "defense", ["base_torch"])
    write_submission(attacks, "slow", "attack", "#!/bin/sh\nsleep 3\n" + NOOP_ATTACK.split("\n", 1)[1])

    straight = CliRunner().invoke(main, _run_args(dataset, root, tmp_path / "straight"))
    assert straight.exit_code == 0, straight.output

    out = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox.cli", *_run_args(dataset, root, out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = docker.from_env()
    deadline = time.monotonic() + 300
    run_id = None
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if not (out / "store.sqlite").exists():
            continue
        try:
            with sqlite3.connect(out / "store.sqlite") as db:
                run_id = (db.execute("SELECT value FROM meta WHERE key = 'run_id'").fetchone() or [None])[0]
                done = db.execute("SELECT COUNT(*) FROM pieces").fetchone()[0]
        except sqlite3.OperationalError:
            continue  # the run is still creating its store
        if run_id and done >= 3 and any(c.status == "running" for c in _labelled_containers(client, run_id)):
            break
    else:
        process.kill()
        pytest.fail("the run never reached three finished pieces with a container running")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert _labelled_containers(client, run_id), "the killed run should have left its container behind"
    assert not (out / "results.json").exists()

    resumed = CliRunner().invoke(main, _run_args(dataset, root, out))
    assert resumed.exit_code == 0, resumed.output
    assert "already done" in resumed.output
    assert not _labelled_containers(client, run_id)
    first = json.loads((tmp_path / "straight" / "results.json").read_text())
    second = json.loads((out / "results.json").read_text())
    for key in ("scores", "matrices", "normalised_scores", "rankings"):
        assert first[key] == second[key], key
    assert (tmp_path / "straight" / "all_classification.csv").read_bytes() == (
        out / "all_classification.csv"
    ).read_bytes()


@pytest.mark.usefixtures("docker_ready")
def test_an_interrupt_ends_the_run_at_once_and_leaves_nothing_running(tmp_path):
    """Ctrl-C while pieces run: their containers are removed, and their workers neither try them again nor start
    anything else, so the command exits 130 at once instead of waiting out a retried piece."""
    dataset = make_small_dataset(tmp_path / "data", 10)
    attacks = tmp_path / "a"
    for name in ("sleeper1", "sleeper2", "sleeper3"):
        write_submission(attacks, name, "attack", "#!/bin/sh\nsleep 50\n")
    out = tmp_path / "run"
    args = ["run", "--dataset", str(dataset), "--attacks", str(attacks), "--out", str(out), "--jobs", "2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    client = docker.from_env()
    run_id, deadline = None, time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            with sqlite3.connect(out / "store.sqlite") as db:
                run_id = (db.execute("SELECT value FROM meta WHERE key = 'run_id'").fetchone() or [None])[0]
        except sqlite3.OperationalError:
            continue  # no store yet
        running = [c for c in _labelled_containers(client, run_id or "?") if c.status == "running"]
        if sum(1 for c in running if not c.name.endswith("-keeper")) == 2:
            break
    else:
        process.kill()
        pytest.fail("the run never had both sleepers running")
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=45)  # a retried sleeper would hold the exit for 50 s
    assert process.returncode == 130, output
    assert time.monotonic() - interrupted < 30, output
    assert f"resume with --out {out}" in output
    assert not _labelled_containers(client, run_id)
    assert not client.volumes.list(filters={"label": f"{LABEL_RUN}={run_id}"})


def _noop_run(tmp_path: Path) -> tuple[Path, list[str]]:
    """A 10-image data set and a do-nothing attack: (the data set, `sandbox run` arguments without --dataset/--out)."""
    dataset = make_small_dataset(tmp_path / "data", 10)
    attacks = tmp_path / "a"
    write_submission(attacks, "noop", "attack", NOOP_ATTACK)
    return dataset, ["run", "--attacks", str(attacks)]


@pytest.mark.usefixtures("docker_ready")
def test_a_run_folder_in_use_by_another_run_is_refused_in_one_line(tmp_path):
    """A second `sandbox run --out` on a folder in use would remove the first run's containers as leftovers."""
    dataset, run = _noop_run(tmp_path)
    out = tmp_path / "run"
    args = [*run, "--dataset", str(dataset), "--out", str(out)]
    assert CliRunner().invoke(main, args).exit_code == 0
    other = subprocess.Popen(  # holds the folder's lock as a running `sandbox run` does
        [sys.executable, "-c", f"import fcntl, time; f = open({str(out / '.lock')!r}, 'r+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert other.stdout.readline().strip() == "held"
        refused = CliRunner().invoke(main, args)
        assert refused.exit_code == 1
        assert "another `sandbox run`" in refused.output and "choose another --out" in refused.output
        assert (out / "results.json").is_file()  # the folder is left as it was
    finally:
        other.kill()
        other.wait()
    assert CliRunner().invoke(main, args).exit_code == 0  # free again once that process is gone


@pytest.mark.usefixtures("docker_ready")
def test_resume_refuses_other_scoring_settings(tmp_path):
    dataset, run = _noop_run(tmp_path)
    args = [*run, "--dataset", str(dataset), "--out", str(tmp_path / "run")]
    assert CliRunner().invoke(main, args).exit_code == 0
    changed = CliRunner().invoke(main, [*args, "--epsilon", "8"])
    assert changed.exit_code == 1 and "the same epsilon" in changed.output


@pytest.mark.usefixtures("docker_ready")
def test_resume_refuses_another_data_set_and_report_refuses_a_changed_one(tmp_path):
    """Stored pieces name batches of the data set, not images: a resume on other images would mix two runs."""
    dataset, noop_run = _noop_run(tmp_path)
    run = tmp_path / "run"
    args = [*noop_run, "--out", str(run)]
    assert CliRunner().invoke(main, [*args, "--dataset", str(dataset)]).exit_code == 0
    other = CliRunner().invoke(main, args)  # the shipped data set: the resume a user types from memory
    assert other.exit_code == 1 and f"resume it with --dataset {dataset}" in other.output
    assert CliRunner().invoke(main, [*args, "--dataset", str(dataset)]).exit_code == 0  # the right one still works

    csv = dataset / "dataset.csv"
    header, first, *rest = csv.read_text().splitlines()
    image_id, label, target = first.split(",")
    csv.write_text("\n".join([header, f"{image_id},{(int(label) + 1) % 10},{target}", *rest]) + "\n")
    report = CliRunner().invoke(main, ["report", str(run)])
    assert report.exit_code == 1 and "dataset.csv" in report.output and "changed since the run" in report.output


def test_untrusted_text_reaches_the_terminal_without_escape_sequences_or_markup():
    from rich.console import Console

    from sandbox.cli import _safe

    hostile = "team\x1b[2J\x1b]0;owned\x07 [red]x[/red] [link=file:///etc/passwd]y[/link]\r"
    safe = _safe(hostile)
    assert "\x1b" not in safe and "\x07" not in safe and "\r" not in safe
    console = Console(record=True, width=200)
    console.print(safe)
    assert console.export_text().strip() == "team?[2J?]0;owned? [red]x[/red] [link=file:///etc/passwd]y[/link]?"
