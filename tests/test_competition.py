"""Whole runs in real containers on real images: scores, clipping, failures, dedup, hostile names."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sandbox import Limits, RunOptions, load_dataset, rebuild_report, run_competition
from tests.conftest import make_small_dataset
from tests.submissions import FIXED_LABEL_DEFENSE, NOISE_255_ATTACK, NOOP_ATTACK, TORCH, write_submission

pytestmark = pytest.mark.usefixtures("docker_ready")
FAST = Limits(time_per_100_images=150.0, memory="512m", cpus=1.0)


def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    return tmp_path / "attacks", tmp_path / "targeted", tmp_path / "defenses"


def options(tmp_path: Path, dataset: Path, **overrides) -> RunOptions:
    attacks, targeted, defenses = folders(tmp_path)
    for folder in (attacks, targeted, defenses):
        folder.mkdir(exist_ok=True)
    settings = dict(
        attacks=(attacks,),
        targeted_attacks=(targeted,),
        defenses=(defenses,),
        dataset=dataset,
        out=tmp_path / "run",
        batch_size=10,
        attack_piece_size=10,
        defense_batch_size=1000,
        jobs=1,  # one piece at a time: the time limits below stay far from a busy machine's noise
        limits=FAST,
        build_images=False,
    )
    settings.update(overrides)
    return RunOptions(**settings)


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_scores_match_a_hand_computed_expectation(tmp_path, small_dataset):
    attacks, targeted, defenses = folders(tmp_path)
    write_submission(attacks, "noop", "attack", NOOP_ATTACK)
    write_submission(targeted, "noop_targeted", "targeted_attack", NOOP_ATTACK)
    write_submission(defenses, "always3", "defense", FIXED_LABEL_DEFENSE)
    result = run_competition(options(tmp_path, small_dataset))

    records = load_dataset(small_dataset).records
    true3 = sum(r.true_label == 3 for r in records)
    target3 = sum(r.target_class == 3 for r in records)
    out = result.out
    assert read_csv(out / "accuracy_on_attacks.csv") == [["", "always3"], ["noop", str(true3)]]
    assert read_csv(out / "accuracy_on_targeted_attacks.csv") == [["", "always3"], ["noop_targeted", str(true3)]]
    assert read_csv(out / "hit_target_class.csv") == [["", "always3"], ["noop_targeted", str(target3)]]
    assert read_csv(out / "defense_ranking.csv") == [["DefenseName", "Score"], ["always3", str(2 * true3)]]
    assert read_csv(out / "attack_ranking.csv") == [["AttackName", "Score"], ["noop", str(20 - true3)]]
    assert read_csv(out / "targeted_attack_ranking.csv") == [["AttackName", "Score"], ["noop_targeted", str(target3)]]
    rows = read_csv(out / "all_classification.csv")
    assert rows[0] == [
        "AttackName",
        "IsTargeted",
        "DefenseName",
        "ImageId",
        "PredictedLabel",
        "TrueLabel",
        "TargetClass",
    ]
    assert len(rows) == 1 + 2 * 20
    assert {row[1] for row in rows[1:]} == {"True", "False"} and {row[4] for row in rows[1:]} == {"3"}
    results = json.loads((out / "results.json").read_text())
    assert results["scores"]["defense"] == {"always3": 2 * true3}
    assert results["normalised_scores"]["attack"]["noop"] == round((20 - true3) / 20, 6)
    assert result.complete
    # Two attacks wrote the same (clean) images: the defense classified each distinct image once.
    with sqlite3.connect(out / "store.sqlite") as db:
        assert db.execute("SELECT SUM(n_images) FROM pieces WHERE kind = 'defense'").fetchone()[0] == 20
    html = (out / "report.html").read_text()
    assert "always3" in html and "noop_targeted" in html and html.count("data:image/png;base64,") == 8 * 3
    # Where the time went: one bar per piece on the worker that ran it, and each submission's time profile.
    timing = results["timing"]
    assert len(timing["timeline"]["bars"]) == timing["pieces"] == html.count("<g><title>")
    assert timing["timeline"]["workers"] == ["piece_0"] and 0 <= timing["timeline"]["idle_share"] < 1
    assert set(timing["per_submission"]) == {"noop", "noop_targeted", "always3"}
    assert timing["per_submission"]["always3"]["images"] == 20
    assert "Where the time went" in html and "<svg" in html
    # Scoring reads the store only: rebuilding the report gives the same results.
    assert rebuild_report(out)["scores"] == results["scores"]


def test_noise_beyond_epsilon_is_clipped_exactly_and_counted(tmp_path, small_dataset):
    attacks, _, defenses = folders(tmp_path)
    write_submission(attacks, "noise255", "attack", NOISE_255_ATTACK, image=TORCH, entry="attack.py")
    write_submission(defenses, "always3", "defense", FIXED_LABEL_DEFENSE)
    result = run_competition(options(tmp_path, small_dataset, epsilon=(8,)))

    dataset = load_dataset(small_dataset)
    with sqlite3.connect(result.out / "store.sqlite") as db:
        rows = db.execute("SELECT image_id, sha256, clipped_pixels, failed FROM adversarial").fetchall()
    assert len(rows) == 20 and not any(failed for *_, failed in rows)
    total_expected = 0
    for image_id, sha, clipped, _ in rows:
        clean = dataset.load_pixels(image_id).astype(int)
        adversarial = np.asarray(Image.open(result.out / "adversarial" / sha[:2] / f"{sha}.png")).astype(int)
        assert np.abs(adversarial - clean).max() <= 8
        # The raw output was 0 or 255 everywhere; clipping lands on clean +- 8 within [0, 255].
        up, down = np.minimum(clean + 8, 255), np.maximum(clean - 8, 0)
        raised = adversarial == up
        assert np.all(raised | (adversarial == down))
        raw = np.where(raised, 255, 0)
        moved = int(np.count_nonzero(raw != adversarial))
        assert clipped == moved
        total_expected += moved
    assert result.results["failures"]["noise255"]["clipped_pixels"] == total_expected > 0


def test_failing_submissions_are_counted_and_the_run_goes_on(tmp_path, small_dataset):
    attacks, _, defenses = folders(tmp_path)
    write_submission(attacks, "crash", "attack", "#!/bin/sh\necho 'boom: no weights' >&2\nexit 3\n")
    write_submission(attacks, "nothing", "attack", "#!/bin/sh\nexit 0\n")
    write_submission(attacks, "sleepy", "attack", "#!/bin/sh\nsleep 300\n")
    write_submission(attacks, "wrongsize", "attack", WRONG_SIZE_ATTACK, image=TORCH, entry="attack.py")
    write_submission(attacks, "noop", "attack", NOOP_ATTACK)
    write_submission(defenses, "malformed", "defense", MALFORMED_DEFENSE)
    write_submission(defenses, "always3", "defense", FIXED_LABEL_DEFENSE)
    limits = Limits(time_per_100_images=30.0, min_time=0.0, memory="512m", cpus=1.0)  # 3 s for a 10-image piece
    result = run_competition(options(tmp_path, small_dataset, limits=limits))

    failures = result.results["failures"]
    assert failures["crash"]["crashes"] == 2 and failures["crash"]["failed_images"] == 20
    assert "boom: no weights" in failures["crash"]["log_tail"]
    assert failures["nothing"]["failed_images"] == 20 and failures["nothing"]["pieces_failed"] == 0
    assert failures["sleepy"]["timeouts"] == 2 and failures["sleepy"]["failed_images"] == 20
    assert failures["wrongsize"]["failed_images"] == 20
    assert failures["noop"]["failed_images"] == 0
    # Failed images are replaced by the clean image: each attack's score equals noop's against always3.
    scores = result.results["scores"]["attack"]
    assert len(set(scores.values())) == 1
    # malformed: only the lines for even-numbered images parse; the rest count as wrong.
    malformed = failures["malformed"]
    assert malformed["bad_result_lines"] > 0 and malformed["failed_images"] > 0
    rows = [r for r in read_csv(result.out / "all_classification.csv")[1:] if r[2] == "malformed"]
    assert {r[4] for r in rows} == {"", "3"}
    assert not result.complete


def test_a_one_image_piece_still_gets_the_minimum_time_limit(tmp_path):
    dataset = make_small_dataset(tmp_path / "data1", 1)
    attacks, _, defenses = folders(tmp_path)
    write_submission(attacks, "slow_start", "attack", "#!/bin/sh\nsleep 2\n" + NOOP_ATTACK.split("\n", 1)[1])
    write_submission(defenses, "always3", "defense", FIXED_LABEL_DEFENSE)
    scaled_only = Limits(time_per_100_images=50.0, min_time=0.0, memory="512m", cpus=1.0)  # 0.5 s for 1 image
    floored = Limits(time_per_100_images=50.0, min_time=20.0, memory="512m", cpus=1.0)

    killed = run_competition(options(tmp_path, dataset, limits=scaled_only, out=tmp_path / "scaled"))
    kept = run_competition(options(tmp_path, dataset, limits=floored, out=tmp_path / "floored"))

    assert killed.results["failures"]["slow_start"]["timeouts"] == 1
    assert kept.results["failures"]["slow_start"]["timeouts"] == 0
    assert kept.results["failures"]["slow_start"]["failed_images"] == 0
    manifest = json.loads((kept.out / "manifest.json").read_text())
    assert manifest["settings"]["limits"]["min_time"] == 20.0


def test_bad_metadata_is_left_out_with_one_line_and_the_rest_runs(tmp_path, small_dataset):
    attacks, _, defenses = folders(tmp_path)
    write_submission(attacks, "noop", "attack", NOOP_ATTACK)
    broken = write_submission(attacks, "broken", "attack", NOOP_ATTACK)
    (broken / "metadata.json").write_text('{"type": "attack", "container": "x"}')
    write_submission(attacks, "noimage", "attack", NOOP_ATTACK, image="nobody/none:1")
    write_submission(defenses, "always3", "defense", FIXED_LABEL_DEFENSE)
    result = run_competition(options(tmp_path, small_dataset))

    reasons = {lo.id: lo.error for lo in result.left_out}
    assert set(reasons) == {"broken", "noimage"}
    assert "metadata.json: field 'entry_point'" in reasons["broken"] and "\n" not in reasons["broken"]
    assert "docker pull nobody/none:1" in reasons["noimage"]
    assert list(result.results["scores"]["attack"]) == ["noop"]
    assert {lo["id"] for lo in result.results["left_out"]} == {"broken", "noimage"}


def test_submissions_never_see_image_ids_and_get_a_seed(tmp_path, small_dataset):
    attacks, targeted, defenses = folders(tmp_path)
    spy = '#!/bin/sh\nls -a "$1" >&2\ncat "$1"/target_class.csv >&2 2>/dev/null\nenv >&2\ncp "$1"/*.png "$2"/\n'
    write_submission(attacks, "spy", "attack", spy)
    write_submission(targeted, "spy_targeted", "targeted_attack", spy)
    write_submission(
        defenses,
        "spy_defense",
        "defense",
        '#!/bin/sh\nls -a "$1" >&2\nfor f in "$1"/*.png; do echo "$(basename "$f"),1"; done > "$2"\n',
    )
    result = run_competition(options(tmp_path, small_dataset))

    with sqlite3.connect(result.out / "store.sqlite") as db:
        logs = db.execute("SELECT piece_id, stderr_tail FROM pieces").fetchall()
    assert len(logs) == 5
    for piece_id, stderr in logs:
        assert "fmnist_test" not in stderr, piece_id
        names = [line for line in stderr.splitlines() if line.endswith(".png")]
        assert names and all(re.fullmatch(r"[0-9a-f]{20}\.png", n) for n in names), piece_id
        if piece_id.startswith("targeted_attack"):
            assert re.search(r"^[0-9a-f]{20}\.png,[0-9]$", stderr, re.MULTILINE)
        if not piece_id.startswith("defense"):
            assert re.search(r"^SANDBOX_SEED=\d+$", stderr, re.MULTILINE)


WRONG_SIZE_ATTACK = """#!/usr/bin/env python3
import sys, pathlib
from PIL import Image
for path in pathlib.Path(sys.argv[1]).glob("*.png"):
    Image.open(path).resize((32, 32)).save(pathlib.Path(sys.argv[2]) / path.name)
"""
MALFORMED_DEFENSE = """#!/bin/sh
i=0
for f in "$1"/*.png; do
  if [ $((i % 2)) -eq 0 ]; then echo "$(basename "$f"),3"; else echo "$(basename "$f"),3.0"; fi
  i=$((i + 1))
done > "$2"
echo "garbage line" >> "$2"
"""


HOSTILE = {
    # Each writes its images only if its escape failed, so a clean score means it stayed inside.
    "network": "#!/usr/bin/env python3\nimport shutil, socket, sys, pathlib\ntry:\n"
    "    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    sys.exit(0)\nexcept OSError:\n    pass\n"
    "for p in pathlib.Path(sys.argv[1]).glob('*.png'):\n    shutil.copy(p, sys.argv[2])\n",
    "write_host": "#!/bin/sh\ntouch /code/planted /etc/planted /input_images/planted 2>/dev/null && exit 0\n"
    'cp "$1"/*.png "$2"/\n',
    "symlinks": '#!/bin/sh\nfor f in "$1"/*.png; do ln -s /etc/passwd "$2/$(basename "$f")"; done\n',
    "memory_hog": "#!/usr/bin/env python3\nblocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))\n",
    # Forks until refused (each child holds its process), so its images mean the process limit held; a shell bomb
    # is no good here: once forks fail its own next command fails too, so it crashes or times out by chance.
    "fork_bomb": "#!/usr/bin/env python3\nimport os, shutil, sys, time, pathlib\nfor forks in range(10000):\n"
    "    try:\n        pid = os.fork()\n    except OSError:\n"
    "        print(f'fork refused after {forks} forks', file=sys.stderr)\n        break\n"
    "    if pid == 0:\n        time.sleep(600)\n        os._exit(0)\nelse:\n    sys.exit(0)\n"
    "for p in pathlib.Path(sys.argv[1]).glob('*.png'):\n    shutil.copy(p, sys.argv[2])\n",
    "fill_output": '#!/bin/sh\ncp "$1"/*.png "$2"/\ndd if=/dev/zero of="$2/fill" bs=1M count=64 2>/dev/null\nexit 0\n',
    # A petabyte that costs the tmpfs nothing: its archive would stream zeros for days if read to the end.
    "sparse_output": '#!/bin/sh\ncp "$1"/*.png "$2"/\ntruncate -s 1P "$2/sparse"\nexit 0\n',
}


def test_hostile_submissions_stay_inside_and_the_run_goes_on(tmp_path, small_dataset):
    attacks, _, defenses = folders(tmp_path)
    for name, script in HOSTILE.items():
        write_submission(attacks, name, "attack", script)
    write_submission(defenses, "always3", "defense", FIXED_LABEL_DEFENSE)
    limits = Limits(time_per_100_images=50.0, memory="256m", cpus=1.0, pids=64, output_size="8m")
    result = run_competition(options(tmp_path, small_dataset, limits=limits, attack_piece_size=20))

    failures = result.results["failures"]
    assert failures["network"]["failed_images"] == 0, failures["network"]
    assert failures["write_host"]["failed_images"] == 0, failures["write_host"]
    assert not list(attacks.glob("*/planted")) and not list(small_dataset.glob("**/planted"))
    assert failures["symlinks"]["failed_images"] == 20 and failures["symlinks"]["skipped_output_files"] == 20
    assert failures["memory_hog"]["oom_kills"] == 1 and failures["memory_hog"]["failed_images"] == 20
    assert failures["fork_bomb"]["failed_images"] == 0, failures["fork_bomb"]
    forks = int(re.search(r"fork refused after (\d+) forks", failures["fork_bomb"]["log_tail"]).group(1))
    assert forks < 64, failures["fork_bomb"]["log_tail"]
    assert failures["fill_output"]["failed_images"] == 0 and failures["fill_output"]["pieces_failed"] == 0
    # Read up to the sparse file (in the order Docker lists the folder), which is listed; the run went on.
    assert failures["sparse_output"]["skipped_output_files"] == 1, failures["sparse_output"]
    assert result.results["scores"]["defense"]["always3"] > 0
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["settings"]["limits"]["pids"] == 64 and manifest["settings"]["isolation"] == "docker/runc"


def test_defenses_classify_only_the_images_of_the_attacks_taking_part(tmp_path, small_dataset):
    """An attack whose images are stored, then excluded before the defenses ran (a kill, then a resume that
    excludes it): the defenses never get its images, and the scores are those of a run without it."""
    attacks, _, defenses = folders(tmp_path)
    write_submission(attacks, "noop", "attack", NOOP_ATTACK)
    write_submission(attacks, "noise", "attack", NOISE_255_ATTACK, image=TORCH)
    run_competition(options(tmp_path, small_dataset))  # attacks only: no defense yet
    write_submission(defenses, "always3", "defense", FIXED_LABEL_DEFENSE)
    result = run_competition(options(tmp_path, small_dataset, exclude=("noise",)))

    with sqlite3.connect(result.out / "store.sqlite") as db:
        classified = db.execute("SELECT COUNT(*) FROM labels WHERE defense_id = 'always3'").fetchone()[0]
        noise_images = db.execute("SELECT COUNT(*) FROM adversarial WHERE submission_id = 'noise'").fetchone()[0]
    assert noise_images == 20  # stored, kept
    assert classified == 20  # the 20 clean images noop gave back, not noise's 20 as well
    true3 = sum(r.true_label == 3 for r in load_dataset(small_dataset).records)
    assert result.results["scores"]["defense"] == {"always3": true3}  # noop's images only
