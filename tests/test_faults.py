"""Faults of the host, not of a submission: a full disk, a Docker restart, a container someone else removed, a
daemon that refuses every container. None may be scored as a submission's failure, lose a stored piece or change
a score; each ends in a retry or in one line and a resumable run folder."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from subprocess import DEVNULL

import docker
import pytest

from sandbox import Limits, run_competition
from sandbox.competition import Events
from sandbox.errors import HostFault, SandboxError
from sandbox.runtime.base import LABEL_RUN
from sandbox.store import RunStore
from tests.conftest import IN_CI
from tests.submissions import FIXED_LABEL_DEFENSE, NOOP_ATTACK, write_submission
from tests.test_competition import folders, options, read_csv

pytestmark = pytest.mark.usefixtures("docker_ready")
REPO = Path(__file__).resolve().parents[1]
SLOW_DEFENSE = "#!/bin/sh\nsleep 6\n" + FIXED_LABEL_DEFENSE.split("\n", 1)[1]


def needs_root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI=true and these fault tests need root (tmpfs mounts, restarting dockerd)")
        pytest.skip("needs root")


def two_attacks_one_defense(tmp_path: Path, defense: str = FIXED_LABEL_DEFENSE, **extra: str) -> None:
    attacks, targeted, defenses = folders(tmp_path)
    write_submission(attacks, "noop", "attack", NOOP_ATTACK, **extra)
    write_submission(targeted, "noop_targeted", "targeted_attack", NOOP_ATTACK, **extra)
    write_submission(defenses, "always3", "defense", defense, **extra)


def classification(run: Path) -> list[list[str]]:
    return read_csv(run / "all_classification.csv")


def test_an_id_used_by_two_kinds_is_refused_for_the_second_and_never_swaps_code(tmp_path, small_dataset):
    attacks, targeted, defenses = folders(tmp_path)
    write_submission(attacks, "team", "attack", NOOP_ATTACK)
    write_submission(targeted, "team", "targeted_attack", NOOP_ATTACK)
    write_submission(defenses, "team", "defense", FIXED_LABEL_DEFENSE)
    write_submission(defenses, "always3", "defense", FIXED_LABEL_DEFENSE)
    result = run_competition(options(tmp_path, small_dataset))

    reasons = {(lo.path.parent.name, lo.id): lo.error for lo in result.left_out}
    assert set(reasons) == {("targeted", "team"), ("defenses", "team")}
    assert all("already loaded as an attack; rename one of them" in r and "\n" not in r for r in reasons.values())
    assert list(result.results["scores"]["attack"]) == ["team"]
    assert list(result.results["scores"]["defense"]) == ["always3"]
    # Archives of each kind unpack into their own folder: one can never overwrite another's code.
    assert not (result.out / "submissions" / "team").exists()


def test_ids_a_spreadsheet_or_terminal_would_run_are_refused_with_one_line(tmp_path, small_dataset):
    attacks, _, defenses = folders(tmp_path)
    write_submission(attacks, "=HYPERLINK(1)", "attack", NOOP_ATTACK)
    write_submission(attacks, "bell\x07", "attack", NOOP_ATTACK)
    write_submission(attacks, "ok [red]<script> é;$(x)", "attack", NOOP_ATTACK)
    write_submission(defenses, "always3", "defense", FIXED_LABEL_DEFENSE)
    result = run_competition(options(tmp_path, small_dataset))

    reasons = {lo.id: lo.error for lo in result.left_out}
    assert "spreadsheets read as a formula" in reasons["=HYPERLINK(1)"]
    assert "control character" in reasons["bell\x07"]
    assert list(result.results["scores"]["attack"]) == ["ok [red]<script> é;$(x)"]
    assert result.complete is False and result.results["failures"]["ok [red]<script> é;$(x)"]["failed_images"] == 0


class Warnings(Events):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, text: str) -> None:
        self.lines.append(text)


class FillDiskAfterFirstPiece(Events):
    """Fills the run folder's disk as soon as one piece is stored, so the next write meets a full disk."""

    def __init__(self, filler: Path) -> None:
        self.filler = filler

    def piece_done(self, record) -> None:
        if self.filler.exists():
            return
        with open(self.filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass


def test_a_full_disk_stops_with_one_line_and_a_resume_gives_the_same_scores(tmp_path, small_dataset):
    needs_root()
    two_attacks_one_defense(tmp_path)
    straight = run_competition(options(tmp_path, small_dataset, out=tmp_path / "straight"))
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
    try:
        run = disk / "run"
        with pytest.raises(SandboxError) as error:
            run_competition(options(tmp_path, small_dataset, out=run), FillDiskAfterFirstPiece(disk / "filler"))
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"{run}: no space left on device")
        assert f"resume with --out {run}" in message
        with sqlite3.connect(run / "store.sqlite") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            stored = db.execute("SELECT COUNT(*) FROM pieces").fetchone()[0]
        assert stored >= 1
        assert not list(run.rglob("*.tmp")), "a half-written file was left behind"

        (disk / "filler").unlink()
        resumed = run_competition(options(tmp_path, small_dataset, out=run))
        assert resumed.resumed_pieces == stored
        assert classification(run) == classification(straight.out)
        assert resumed.results["scores"] == straight.results["scores"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _run_containers(run_out: Path) -> list:
    """The containers of the run whose folder is `run_out` (its id is in the store)."""
    try:
        with sqlite3.connect(run_out / "store.sqlite") as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'run_id'").fetchone()
    except sqlite3.Error:
        return []
    if not row:
        return []
    client = docker.from_env()
    return client.containers.list(filters={"label": f"{LABEL_RUN}={row[0]}", "status": "running"}, ignore_removed=True)


def _when_a_defense_runs(run_out: Path, action, fired: list, timeout: float = 120.0) -> threading.Thread:
    """Calls `action(container)` once, when a defense piece's container has run for a second; notes it in `fired`."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for container in _run_containers(run_out):
                if container.labels.get("org.adversarial-sandbox.piece", "").startswith("defense/") and not (
                    container.name.endswith("-keeper")
                ):
                    time.sleep(1.0)
                    action(container)
                    fired.append(container.name)
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_container_removed_by_someone_else_is_run_again_not_scored(tmp_path, small_dataset):
    two_attacks_one_defense(tmp_path, SLOW_DEFENSE)
    run = tmp_path / "run"
    fired: list[str] = []
    watcher = _when_a_defense_runs(run, lambda container: container.remove(force=True), fired)
    events = Warnings()
    result = run_competition(options(tmp_path, small_dataset, out=run), events)
    watcher.join(timeout=5)
    assert fired, "no defense container was seen running"
    assert any("the host's fault, not the submission's" in line for line in events.lines), events.lines

    assert result.complete, result.results["failures"]
    failures = result.results["failures"]["always3"]
    assert failures["pieces_failed"] == 0 and failures["failed_images"] == 0
    true3 = sum(row[5] == "3" for row in classification(run)[1:])
    assert result.results["scores"]["defense"]["always3"] == true3


def _restart_dockerd() -> None:
    """Stops dockerd the way a crash or an upgrade would, and starts it again as this machine starts it."""
    if Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "restart", "docker"], check=True)
        return
    subprocess.run(["pkill", "-TERM", "-x", "dockerd"], check=False)
    for _ in range(60):
        if subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True).returncode != 0:
            break
        time.sleep(0.5)
    time.sleep(3)  # the run sees a daemon that is gone for a while, not a blink
    subprocess.run(["bash", str(REPO / "scripts" / "install-docker.sh")], check=True)


def test_a_docker_restart_mid_run_is_waited_for_and_gives_the_same_scores(tmp_path, small_dataset):
    needs_root()
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not on this machine (a remote daemon cannot be restarted from here)")
    two_attacks_one_defense(tmp_path, SLOW_DEFENSE)
    run = tmp_path / "run"
    fired: list[str] = []
    watcher = _when_a_defense_runs(run, lambda container: _restart_dockerd(), fired)
    events = Warnings()
    result = run_competition(options(tmp_path, small_dataset, out=run, docker_wait=120.0), events)
    watcher.join(timeout=120)
    assert fired, "no defense container was seen running"
    assert any("waiting up to 120 s for it to come back" in line for line in events.lines), events.lines

    assert result.complete, result.results["failures"]
    assert result.results["failures"]["always3"]["pieces_failed"] == 0
    true3 = sum(row[5] == "3" for row in classification(run)[1:])
    assert result.results["scores"]["defense"]["always3"] == true3


def test_a_daemon_that_refuses_every_container_stops_the_run_without_scoring_anyone(tmp_path, small_dataset):
    # Docker refuses to create any container below its minimum memory limit (6 MB): a daemon that refuses every
    # container, whatever the submission does. (A GPU request on a GPU-less Docker used to stand in for this; a run
    # with --gpus now stops before any piece when Docker has no GPU runtime.)
    two_attacks_one_defense(tmp_path)
    run = tmp_path / "run"
    with pytest.raises(HostFault) as error:
        run_competition(options(tmp_path, small_dataset, out=run, limits=Limits(memory="4m")))
    message = str(error.value)
    assert "\n" not in message and "Docker failed the container" in message
    assert f"resume with --out {run}" in message
    with sqlite3.connect(run / "store.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM pieces").fetchone()[0] == 0  # nobody was scored for it
    assert _run_containers(run) == []
    time.sleep(8)  # pieces that were in flight when the run stopped start nothing that outlives it
    assert _run_containers(run) == []


def test_kills_at_seeded_random_points_then_a_resume_give_identical_scores(tmp_path):
    """SIGKILL of the whole orchestrator at three points drawn with a fixed seed, each followed by a resume."""
    from tests.conftest import make_small_dataset
    from tests.submissions import NOISE_255_ATTACK, TORCH

    dataset = make_small_dataset(tmp_path / "data", 40)
    attacks, targeted, defenses = folders(tmp_path)
    write_submission(attacks, "noop", "attack", NOOP_ATTACK)
    write_submission(attacks, "noise255", "attack", NOISE_255_ATTACK, image=TORCH, entry="attack.py")
    write_submission(targeted, "noop_targeted", "targeted_attack", NOOP_ATTACK)
    write_submission(defenses, "always3", "defense", FIXED_LABEL_DEFENSE)
    write_submission(defenses, "slow3", "defense", "#!/bin/sh\nsleep 1\n" + FIXED_LABEL_DEFENSE.split("\n", 1)[1])

    def args(out: Path) -> list[str]:
        return [
            *("run", "--dataset", str(dataset), "--out", str(out), "--jobs", "2"),
            *("--attacks", str(attacks), "--targeted-attacks", str(targeted), "--defenses", str(defenses)),
            *("--batch-size", "10", "--attack-piece-size", "10", "--epsilon", "8,16", "--no-build"),
        ]

    started = time.monotonic()
    straight = subprocess.run([sys.executable, "-m", "sandbox.cli", *args(tmp_path / "straight")], capture_output=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    straight_s = time.monotonic() - started

    out = tmp_path / "killed"
    kill_points = [random.Random(2026 + i).uniform(1.0, 0.8 * straight_s) for i in range(3)]
    killed = 0
    for delay in kill_points:
        process = subprocess.Popen([sys.executable, "-m", "sandbox.cli", *args(out)], stdout=DEVNULL, stderr=DEVNULL)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            killed += 1
    assert killed >= 2, f"the run finished before the kills ({kill_points} s into a {straight_s:.1f} s run)"
    resumed = subprocess.run([sys.executable, "-m", "sandbox.cli", *args(out)], capture_output=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    assert classification(out) == classification(tmp_path / "straight")
    first = json.loads((tmp_path / "straight" / "results.json").read_text())
    second = json.loads((out / "results.json").read_text())
    for key in ("scores", "matrices", "normalised_scores", "rankings"):
        assert first[key] == second[key], key
    # Every planned piece is recorded once: attack pieces by name, defense pieces as the run folder planned them
    # (their ids name their images, and noise255's images depend on each run folder's opaque names).
    with sqlite3.connect(tmp_path / "straight" / "store.sqlite") as db:
        straight_pieces = sorted(row[0] for row in db.execute("SELECT piece_id FROM pieces"))
    with sqlite3.connect(out / "store.sqlite") as db:
        recorded = [row[0] for row in db.execute("SELECT piece_id FROM pieces ORDER BY piece_id")]
        labels = db.execute("SELECT COUNT(*), COUNT(DISTINCT defense_id || sha256) FROM labels").fetchone()
    store = RunStore(out)
    planned = set(store.defense_plan())
    store.close()
    assert [p for p in recorded if not p.startswith("defense/")] == [
        p for p in straight_pieces if not p.startswith("defense/")
    ]
    assert {p for p in recorded if p.startswith("defense/")} == planned
    assert len(planned) == len([p for p in straight_pieces if p.startswith("defense/")])
    assert labels[0] == labels[1]
    assert _run_containers(out) == []
