"""Participants' commands: `new`, `validate`, `package`, on real containers."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from sandbox import Limits, RunOptions, run_competition
from sandbox.cli import main
from sandbox.package import package_submission
from sandbox.scaffold import new_submission
from sandbox.validate import validate_submission
from tests.broken_corpus import CORPUS
from tests.submissions import FIXED_LABEL_DEFENSE, NOOP_ATTACK, write_submission

pytestmark = pytest.mark.usefixtures("docker_ready")


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "none"
    folder.mkdir(exist_ok=True)
    return folder


TRIAL_LIMITS = Limits(time_per_100_images=30.0, min_time=0.0, memory="1g", cpus=1.0)  # 6 s for 20 images


@pytest.fixture(scope="module")
def corpus_reports(tmp_path_factory) -> dict:
    parent = tmp_path_factory.mktemp("broken")
    return {name: validate_submission(build(parent), limits=TRIAL_LIMITS) for name, build, _, _ in CORPUS}


@pytest.mark.parametrize(("name", "level", "fragment"), [(n, lvl, frag) for n, _, lvl, frag in CORPUS])
def test_each_broken_submission_gets_its_one_line_finding(corpus_reports, name, level, fragment):
    report = corpus_reports[name]
    lines = [finding.line() for finding in report.findings]
    matching = [line for line in lines if line.startswith(f"{level}:") and fragment in line]
    assert matching, lines
    assert all("\n" not in line for line in lines)
    if level == "warning":
        assert not report.errors, lines
        assert report.passed() and not report.passed(strict=True)
    else:
        assert not report.passed()


def test_corpus_covers_at_least_fifteen_kinds():
    assert len({name for name, *_ in CORPUS}) >= 15


def test_validate_cli_exit_codes_and_json(tmp_path):
    good = write_submission(tmp_path, "good", "attack", NOOP_ATTACK)
    broken = write_submission(tmp_path, "broken", "attack", "#!/bin/sh\nexit 1\n")
    ok = CliRunner().invoke(main, ["validate", str(good)])
    assert ok.exit_code == 0 and "good: ok" in ok.output and "memory peak" in ok.output
    bad = CliRunner().invoke(main, ["validate", str(broken), "--json"])
    assert bad.exit_code == 1
    report = json.loads(bad.output)
    assert not report["ok"] and report["errors"][0]["level"] == "error"
    assert report["trial"]["images"] == 20 and "forecast_s_per_100_images" in report["trial"]


@pytest.mark.parametrize("kind", ["attack", "targeted_attack", "defense"])
def test_new_torch_templates_pass_validate(tmp_path, kind):
    folder = new_submission(kind, f"my_{kind}", tmp_path, "torch")
    report = validate_submission(folder)
    assert report.passed(strict=True), [f.line() for f in report.findings]


@pytest.mark.usefixtures("tensorflow_image")
@pytest.mark.parametrize("kind", ["attack", "targeted_attack", "defense"])
def test_new_tensorflow_templates_pass_validate(tmp_path, kind):
    folder = new_submission(kind, f"tf_{kind}", tmp_path, "tensorflow")
    report = validate_submission(folder)
    assert report.passed(strict=True), [f.line() for f in report.findings]


def test_new_refuses_an_existing_folder(tmp_path):
    result = CliRunner().invoke(main, ["new", "attack", "x", "--dir", str(tmp_path)])
    assert result.exit_code == 0
    again = CliRunner().invoke(main, ["new", "attack", "x", "--dir", str(tmp_path)])
    assert again.exit_code == 1 and "already exists" in again.output


def test_package_is_byte_identical_and_leaves_out_what_must_not_ship(tmp_path):
    folder = write_submission(tmp_path / "src", "mine", "attack", NOOP_ATTACK)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"cache")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref")
    (folder / "notes.txt").write_text("kept")
    (folder / "link").symlink_to("/etc/passwd")
    first = package_submission(folder, tmp_path / "a" / "mine.zip")
    os.utime(folder / "notes.txt", (1, 1))  # timestamps must not matter
    second = package_submission(folder, tmp_path / "b" / "mine.zip")
    assert first.archive.read_bytes() == second.archive.read_bytes()
    assert first.files == ["metadata.json", "notes.txt", "run.sh"]
    assert {path for path, _ in first.left_out} == {"__pycache__/", ".git/", "link"}
    with zipfile.ZipFile(first.archive) as zf:
        modes = {info.filename: info.external_attr >> 16 for info in zf.infolist()}
    assert modes == {"metadata.json": 0o100644, "notes.txt": 0o100644, "run.sh": 0o100755}


def test_packaged_archive_round_trips_through_validate_and_run(tmp_path, small_dataset):
    attack = write_submission(tmp_path / "src", "packed_noop", "attack", NOOP_ATTACK)
    defense = write_submission(tmp_path / "src", "packed_defense", "defense", FIXED_LABEL_DEFENSE)
    attacks, defenses = tmp_path / "attacks", tmp_path / "defenses"
    package_submission(attack, attacks / "packed_noop.zip")
    package_submission(defense, defenses / "packed_defense.zip")
    assert validate_submission(attacks / "packed_noop.zip").passed(strict=True)
    result = run_competition(
        RunOptions(
            attacks=(attacks,),
            targeted_attacks=(_empty(tmp_path),),
            defenses=(defenses,),
            dataset=small_dataset,
            out=tmp_path / "run",
            build_images=False,
        )
    )
    assert set(result.results["scores"]["attack"]) == {"packed_noop"}
    assert result.results["failures"]["packed_noop"]["failed_images"] == 0


def test_saved_submission_image_round_trips_through_validate_and_run(tmp_path, small_dataset):
    attack = write_submission(tmp_path / "src", "imaged", "attack", NOOP_ATTACK)
    attacks = tmp_path / "attacks"
    result = package_submission(attack, tmp_path / "imaged.zip", save=attacks / "imaged.tar")
    assert result.image and result.image.startswith("adversarial-sandbox-submission/imaged:")
    report = validate_submission(attacks / "imaged.tar")
    assert report.passed(strict=True), [f.line() for f in report.findings]
    defenses = tmp_path / "defenses"
    write_submission(defenses, "always3", "defense", FIXED_LABEL_DEFENSE)
    run = run_competition(
        RunOptions(
            attacks=(attacks,),
            targeted_attacks=(_empty(tmp_path),),
            defenses=(defenses,),
            dataset=small_dataset,
            out=tmp_path / "run",
            build_images=False,
        )
    )
    assert run.results["failures"]["imaged"]["failed_images"] == 0
    manifest = json.loads((Path(run.out) / "manifest.json").read_text())
    assert manifest["submissions"]["attack"][0]["container"] == result.image


def test_a_slow_forecast_from_a_few_trial_images_is_a_warning_and_from_twenty_an_error(tmp_path):
    """The forecast counts start-up as per-image time: on 5 images a 2 s start-up reads as 40 s per 100 images."""
    slow_start = "#!/bin/sh\nsleep 2\n" + NOOP_ATTACK.split("\n", 1)[1]
    folder = write_submission(tmp_path, "slow_start", "attack", slow_start)
    limits = Limits(time_per_100_images=30.0, min_time=60.0, memory="1g", cpus=1.0)
    few = validate_submission(folder, limits=limits, images=5)
    (finding,) = [f for f in few.findings if "forecast" in f.message]
    assert finding.level == "warning" and "try 20 images or more" in finding.message
    assert few.passed(strict=False)
    slow_per_image = "#!/bin/sh\nsleep 8\n" + NOOP_ATTACK.split("\n", 1)[1]  # 40 s per 100 images on 20
    folder = write_submission(tmp_path, "slow_per_image", "attack", slow_per_image)
    many = validate_submission(folder, limits=limits, images=20)
    (finding,) = [f for f in many.findings if "forecast" in f.message]
    assert finding.level == "error" and not many.passed(strict=False)
