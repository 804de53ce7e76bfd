"""The process runtime (`--runtime process`): the same folder contract as a container, run as local processes.

It needs no Docker, so these tests run everywhere, also where the container tests skip."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import pytest

from sandbox import Limits, RunOptions, load_dataset, run_competition
from sandbox.errors import RunStopping
from sandbox.runtime.base import ContainerJob
from sandbox.runtime.process import ProcessRuntime
from tests.submissions import FIXED_LABEL_DEFENSE, NOOP_ATTACK, write_submission

FAST = Limits(time_per_100_images=150.0, memory="512m", cpus=1.0)


def _options(tmp_path: Path, dataset: Path, **overrides) -> RunOptions:
    folders = {kind: tmp_path / kind for kind in ("attacks", "targeted", "defenses")}
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    settings = dict(
        attacks=(folders["attacks"],),
        targeted_attacks=(folders["targeted"],),
        defenses=(folders["defenses"],),
        dataset=dataset,
        out=tmp_path / "run",
        batch_size=10,
        attack_piece_size=10,
        jobs=1,
        limits=FAST,
        build_images=False,
        runtime="process",
    )
    settings.update(overrides)
    return RunOptions(**settings)


def test_process_runtime_runs_the_same_contract(tmp_path, small_dataset):
    write_submission(tmp_path / "attacks", "noop", "attack", NOOP_ATTACK)
    write_submission(tmp_path / "defenses", "always3", "defense", FIXED_LABEL_DEFENSE)
    result = run_competition(_options(tmp_path, small_dataset))
    assert result.complete
    assert result.results["failures"]["noop"]["isolation"] == "process (no isolation)"
    true3 = sum(r.true_label == 3 for r in load_dataset(small_dataset).records)
    assert result.results["scores"]["defense"] == {"always3": true3}
    assert result.results["scores"]["attack"] == {"noop": 20 - true3}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not yet reaped
    except FileNotFoundError:
        return False


def test_time_limit_kills_the_whole_process_group_and_crashes_are_recorded(tmp_path, small_dataset):
    pid_file = tmp_path / "child.pid"
    # Starts a child that would outlive it, then hangs: the limit must end both.
    hang = f"#!/bin/sh\nsleep 300 &\necho $! > {pid_file}\nsleep 300\n"
    write_submission(tmp_path / "attacks", "hang", "attack", hang)
    write_submission(tmp_path / "attacks", "crash", "attack", "#!/bin/sh\necho 'no weights here' >&2\nexit 3\n")
    write_submission(tmp_path / "defenses", "always3", "defense", FIXED_LABEL_DEFENSE)
    limits = Limits(time_per_100_images=5.0, min_time=0.0, memory="512m", cpus=1.0)  # 1 s for the 20 images
    result = run_competition(_options(tmp_path, small_dataset, limits=limits, batch_size=20, attack_piece_size=20))

    failures = result.results["failures"]
    assert (failures["hang"]["timeouts"], failures["hang"]["failed_images"]) == (1, 20)
    assert failures["hang"]["last_error"] == "timed out after 1 s"
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the attack's child outlived its time limit"
    assert (failures["crash"]["crashes"], failures["crash"]["failed_images"]) == (1, 20)
    assert failures["crash"]["last_error"] == "exit code 3" and "no weights here" in failures["crash"]["log_tail"]
    # Failed images are scored as the clean ones: both attacks score what a no-op would.
    true3 = sum(r.true_label == 3 for r in load_dataset(small_dataset).records)
    assert result.results["scores"]["attack"] == {"crash": 20 - true3, "hang": 20 - true3}
    assert not result.complete
    with (result.out / "attack_ranking.csv").open(newline="") as f:
        assert list(csv.reader(f)) == [["AttackName", "Score"], ["crash", str(20 - true3)], ["hang", str(20 - true3)]]


def test_closing_ends_the_pieces_running_and_starts_no_more(tmp_path):
    """What a stopping run relies on (an interrupt): its workers come back at once and try nothing again."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "run.sh").write_text("#!/bin/sh\nsleep 300\n")
    (code / "run.sh").chmod(0o755)
    job = ContainerJob("r", "p", "", str(code), "run.sh", str(tmp_path), "/output_images", (), {}, 600.0, FAST)
    runtime = ProcessRuntime()
    outcomes = []
    worker = threading.Thread(target=lambda: outcomes.append(runtime.run(job)))
    worker.start()
    deadline = time.monotonic() + 30
    while not runtime._running and time.monotonic() < deadline:
        time.sleep(0.05)
    runtime.close()
    worker.join(timeout=30)
    assert not worker.is_alive() and outcomes[0].exit_code == 128 + 9  # killed, not waited out
    with pytest.raises(RunStopping):
        runtime.run(job)
