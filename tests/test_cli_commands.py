"""`sandbox report`, `package`, `dataset check` and `images build` through Click's runner: exit codes, what they
write, and the one error line for bad input. None needs Docker: the run folder comes from the process runtime."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from sandbox import Limits, RunOptions, load_dataset, run_competition
from sandbox.bundled import default_dataset_dir
from sandbox.cli import main
from sandbox.reporting import NIPS_FILES
from tests.stores import write_dataset
from tests.submissions import FIXED_LABEL_DEFENSE, NOOP_ATTACK, write_submission


def invoke(*args: str, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def unwrapped(text: str) -> str:
    """Without whitespace: Rich folds lines at 80 columns, at a space or inside a long path, where the output is not
    a terminal (see test_paths_are_printed_unbroken); compare both sides through this."""
    return "".join(text.split())


def assert_one_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    errors = error_lines(result.output)
    assert len(errors) == 1 and result.output.strip() == errors[0], result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def table_rows(output: str) -> list[list[str]]:
    """The cells of the rows of the leaderboards printed by `run` and `report`."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in output.splitlines() if line.startswith("│")]


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


# --- sandbox report -----------------------------------------------------------------------------------------------


@pytest.fixture
def finished_run(tmp_path: Path, small_dataset: Path) -> Path:
    """A real, finished run folder: a no-op attack and targeted attack against a defense that always says 3,
    run by the process runtime (no Docker needed)."""
    for kind in ("attacks", "targeted", "defenses"):
        (tmp_path / kind).mkdir()
    write_submission(tmp_path / "attacks", "noop", "attack", NOOP_ATTACK)
    write_submission(tmp_path / "targeted", "noop_targeted", "targeted_attack", NOOP_ATTACK)
    write_submission(tmp_path / "defenses", "always3", "defense", FIXED_LABEL_DEFENSE)
    options = RunOptions(
        attacks=(tmp_path / "attacks",),
        targeted_attacks=(tmp_path / "targeted",),
        defenses=(tmp_path / "defenses",),
        dataset=small_dataset,
        out=tmp_path / "run",
        batch_size=10,
        attack_piece_size=10,
        jobs=1,
        limits=Limits(time_per_100_images=150.0, memory="512m", cpus=1.0),
        build_images=False,
        runtime="process",
    )
    assert run_competition(options).complete
    return tmp_path / "run"


def test_report_rewrites_every_output_from_the_store(finished_run, small_dataset):
    outputs = [*NIPS_FILES, "results.json", "report.html"]
    before = {name: (finished_run / name).read_bytes() for name in outputs}
    for name in outputs:
        (finished_run / name).unlink()

    result = invoke("report", finished_run)
    assert result.exit_code == 0, result.output
    for name in [*NIPS_FILES, "results.json"]:
        assert (finished_run / name).read_bytes() == before[name], name
    assert "always3" in (finished_run / "report.html").read_text()
    # The leaderboards, as `sandbox run` prints them: always3 is right on the images of class 3, for both attacks.
    records = load_dataset(small_dataset).records
    true3, target3 = sum(r.true_label == 3 for r in records), sum(r.target_class == 3 for r in records)
    rows = table_rows(result.output)
    assert ["1", "always3", str(2 * true3), f"{true3 / 20:.3f}"] in rows  # of 20 images x 2 attacks
    assert ["1", "noop", str(20 - true3), f"{(20 - true3) / 20:.3f}"] in rows
    assert ["1", "noop_targeted", str(target3), f"{target3 / 20:.3f}"] in rows
    assert read_csv(finished_run / "defense_ranking.csv") == [["DefenseName", "Score"], ["always3", str(2 * true3)]]
    assert read_csv(finished_run / "hit_target_class.csv") == [["", "always3"], ["noop_targeted", str(target3)]]


def test_report_scores_what_the_store_holds_now(finished_run, small_dataset):
    """Relabelling one stored image changes the rebuilt scores: the report reads the store, not old outputs."""
    records = load_dataset(small_dataset).records
    first = records[0]
    right, wrong = first.true_label, (first.true_label + 1) % 10
    with sqlite3.connect(finished_run / "store.sqlite") as db:
        [sha] = db.execute(
            "SELECT sha256 FROM adversarial WHERE submission_id = 'noop' AND image_id = ?", (first.image_id,)
        ).fetchone()
        db.execute("UPDATE labels SET label = ? WHERE sha256 = ?", (right if right != 3 else wrong, sha))
    before = json.loads((finished_run / "results.json").read_text())["scores"]
    assert invoke("report", finished_run).exit_code == 0
    after = json.loads((finished_run / "results.json").read_text())["scores"]
    # noop and noop_targeted wrote the same (clean) image, so both rows move by one.
    change = 1 if right != 3 else -1
    assert after["defense"]["always3"] == before["defense"]["always3"] + 2 * change
    assert after["attack"]["noop"] == before["attack"]["noop"] - change


def test_report_on_a_folder_that_is_no_run(tmp_path):
    missing = tmp_path / "nothing"
    assert_one_error(invoke("report", missing), f"{missing / 'manifest.json'}: missing", "sandbox run")
    assert not missing.exists()  # reporting on a wrong path creates nothing there
    (tmp_path / "empty").mkdir()
    assert_one_error(invoke("report", tmp_path / "empty"), "manifest.json: missing")
    assert list((tmp_path / "empty").iterdir()) == []


def test_report_when_the_run_data_set_is_gone(finished_run, small_dataset):
    shutil.rmtree(small_dataset)
    assert_one_error(invoke("report", finished_run), str(small_dataset), "no such data set folder")


# --- sandbox package ----------------------------------------------------------------------------------------------


def _submission(folder: Path) -> Path:
    write_submission(folder.parent, folder.name, "attack", NOOP_ATTACK)
    (folder / "lib").mkdir()
    (folder / "lib" / "helper.py").write_text("X = 1\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "helper.cpython-311.pyc").write_bytes(b"\0")
    (folder / "stale.pyc").write_bytes(b"\0")
    (folder / "weights.bin").symlink_to("/etc/hostname")
    return folder


def test_package_writes_a_deterministic_archive_and_lists_what_it_left_out(tmp_path):
    folder = _submission(tmp_path / "mine")
    result = invoke("package", folder)
    assert result.exit_code == 0, result.output
    archive = tmp_path / "mine.zip"
    assert unwrapped(f"wrote {archive} (3 files)") in unwrapped(result.output)
    left_out = [line for line in result.output.splitlines() if line.startswith("left out")]
    assert sorted(left_out) == [
        "left out __pycache__/: not needed at run time",
        "left out stale.pyc: not needed at run time",
        "left out weights.bin: a link or special file; ship regular files",
    ]
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == ["lib/helper.py", "metadata.json", "run.sh"]
    assert {i.filename: i.external_attr >> 16 for i in infos}["run.sh"] == 0o100755
    assert {i.external_attr >> 16 for i in infos if i.filename != "run.sh"} == {0o100644}
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}

    first = archive.read_bytes()
    os.utime(folder / "lib" / "helper.py", (1e9, 1e9))  # an edit's time, not its content
    again = tmp_path / "again.zip"
    assert invoke("package", folder, "-o", again).exit_code == 0
    assert again.read_bytes() == first


def test_package_refuses_bad_input_with_one_line(tmp_path):
    assert_one_error(invoke("package", tmp_path / "none"), "none: not a folder")
    (tmp_path / "empty").mkdir()
    assert_one_error(invoke("package", tmp_path / "empty"), "empty: no metadata.json")
    folder = _submission(tmp_path / "mine")
    assert_one_error(invoke("package", folder, "-o", tmp_path / "mine.tar"), "mine.tar: the archive must end in .zip")
    (folder / "run.sh").unlink()
    (folder / "run.sh").symlink_to(folder / "lib" / "helper.py")
    assert_one_error(invoke("package", folder), "run.sh: the entry point would be left out")
    assert not (tmp_path / "mine.zip").exists()


# --- sandbox dataset check ----------------------------------------------------------------------------------------


def test_dataset_check_describes_the_shipped_data_set():
    result = invoke("dataset", "check", default_dataset_dir())
    assert result.exit_code == 0, result.output
    assert unwrapped(result.output) == unwrapped(
        f"{default_dataset_dir().resolve()}: 1000 images, 28x28 L, 10 classes (Fashion-MNIST test, 1000 images)"
    )


ROWS = [("a", 0, 1), ("b", 1, 2)]


@pytest.mark.parametrize(
    ("csv_text", "expected"),
    [
        ("ImageId,TrueLabel\na,0\n", "dataset.csv: header lacks TargetClass"),
        ("ImageId,TrueLabel,TargetClass\na,zero,1\n", "dataset.csv: line 2: TrueLabel 'zero' is not an integer"),
        ("ImageId,TrueLabel,TargetClass\na,0,1\na,1,2\n", "dataset.csv: line 3: ImageId 'a' appears twice"),
        ("ImageId,TrueLabel,TargetClass\n../a,0,1\n", "dataset.csv: line 2: ImageId '../a' must be"),
        ("ImageId,TrueLabel,TargetClass\n", "dataset.csv: no images listed"),
        ("ImageId,TrueLabel,TargetClass\na,0,1\nb,1,7\n", "dataset.csv: label 7 outside 0..2"),
        ("ImageId,TrueLabel,TargetClass\na,0,1\nc,1,2\n", "images/c.png: missing"),
        ("ImageId,TrueLabel,TargetClass\na,0,1\nb,1\n", "dataset.csv: line 3: no TargetClass"),
        ("ImageId,TrueLabel,TargetClass\na,0,1\nb,\u00b2,1\n", "dataset.csv: line 3: TrueLabel '\u00b2' is not an"),
        ("ImageId,TrueLabel,TargetClass\na,0,1\nb,1,1\n", "dataset.csv: line 3: TargetClass is the TrueLabel (1)"),
    ],
    ids=["column", "label", "duplicate", "unsafe-id", "empty", "range", "image", "short-row", "digit", "target"],
)
def test_dataset_check_names_the_problem_in_one_line(tmp_path, csv_text, expected):
    folder = write_dataset(tmp_path / "data", ROWS)
    (folder / "dataset.csv").write_text(csv_text)
    assert_one_error(invoke("dataset", "check", folder), str(folder), expected)


def test_dataset_check_refuses_a_truncated_image_and_a_dataset_json_that_is_no_object(tmp_path):
    folder = write_dataset(tmp_path / "data", ROWS)
    image = folder / "images" / "b.png"
    image.write_bytes(image.read_bytes()[:40])  # an interrupted copy: the header reads, the pixels do not
    assert_one_error(invoke("dataset", "check", folder), str(image), "not a readable PNG")
    folder = write_dataset(tmp_path / "data2", ROWS)
    (folder / "dataset.json").write_text("[1, 2]")
    assert_one_error(invoke("dataset", "check", folder), str(folder / "dataset.json"), "not a JSON object")


def test_dataset_check_of_a_missing_folder_or_csv(tmp_path):
    assert_one_error(invoke("dataset", "check", tmp_path / "nowhere"), "nowhere: no such data set folder")
    folder = write_dataset(tmp_path / "data", ROWS)
    (folder / "dataset.csv").unlink()
    assert_one_error(invoke("dataset", "check", folder), f"{folder / 'dataset.csv'}: missing")


def test_dataset_check_accepts_a_hand_made_data_set(tmp_path):
    folder = write_dataset(tmp_path / "data", ROWS)
    result = invoke("dataset", "check", folder)
    assert result.exit_code == 0, result.output
    assert unwrapped(result.output) == unwrapped(f"{folder.resolve()}: 2 images, 2x2 L, 3 classes (hand)")


# --- sandbox images build -----------------------------------------------------------------------------------------


def test_images_build_refuses_an_unknown_target_as_a_usage_error():
    result = invoke("images", "build", "--target", "cuda")
    assert result.exit_code == 2
    assert "Invalid value for '--target': 'cuda' is not one of 'base', 'torch-cpu', 'tensorflow-cpu'" in result.output


def test_images_build_without_docker_is_one_line_and_exit_1(tmp_path):
    """Whether or not this machine has Docker: DOCKER_HOST points at a socket nobody listens on."""
    result = invoke("images", "build", "--target", "base", env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert_one_error(result, "Docker is not reachable", "docker info")


# --- output for scripts -------------------------------------------------------------------------------------------


def test_paths_are_printed_unbroken(tmp_path):
    folder = write_submission(tmp_path / ("long" * 20), "mine", "attack", NOOP_ATTACK)
    result = invoke("package", folder)
    assert result.exit_code == 0
    assert result.output.splitlines() == [f"wrote {folder.parent / 'mine.zip'} (2 files)"]


def test_report_on_an_interrupted_run_says_the_scores_are_not_final(finished_run):
    """An interrupted run's manifest has no wall time yet (it is written when every piece is done)."""
    assert json.loads((finished_run / "results.json").read_text())["complete"] is True
    assert 'id="partial"' not in (finished_run / "report.html").read_text()
    manifest = json.loads((finished_run / "manifest.json").read_text())
    del manifest["run_wall_s"]
    (finished_run / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("report", finished_run)
    assert result.exit_code == 0
    assert "partial run" in result.output and f"sandbox run --out {finished_run}" in result.output
    assert json.loads((finished_run / "results.json").read_text())["complete"] is False
    assert 'id="partial"' in (finished_run / "report.html").read_text()
