"""Organizer runs on real containers: one folder of ~30 received submissions (some broken, some archived, some
named in submissions.csv), late entries added to a finished run, exclusions, a resubmission and the NIPS 2017
rule for incomplete submissions. Every score is checked against an independent count from all_classification.csv.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from sandbox import Limits, RunOptions, run_competition
from sandbox.reporting import NIPS_FILES
from tests.conftest import make_small_dataset

pytestmark = pytest.mark.usefixtures("docker_ready")
REPO = Path(__file__).resolve().parents[1]
LIMITS = Limits(time_per_100_images=40.0, min_time=8.0, memory="1g")


def _corpus_module():
    spec = importlib.util.spec_from_file_location("organizer_corpus", REPO / "benchmarks" / "organizer_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


corpus_module = _corpus_module()


def _run(out: Path, dataset: Path, *folders: Path, **overrides) -> dict:
    options = RunOptions(submissions=folders, dataset=dataset, out=out, jobs=2, limits=LIMITS, **overrides)
    return run_competition(options).results


def independent_scores(run: Path) -> dict[str, dict[str, int]]:
    """The NIPS 2017 scores counted from all_classification.csv alone, without the sandbox's scoring code."""
    scores: dict[str, dict[str, int]] = {"defense": {}, "attack": {}, "targeted_attack": {}}
    with (run / "all_classification.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            predicted = int(row["PredictedLabel"]) if row["PredictedLabel"] else None
            correct = predicted == int(row["TrueLabel"])
            defense = scores["defense"]
            defense[row["DefenseName"]] = defense.get(row["DefenseName"], 0) + correct
            if row["IsTargeted"] == "True":
                hit = predicted == int(row["TargetClass"])
                targeted = scores["targeted_attack"]
                targeted[row["AttackName"]] = targeted.get(row["AttackName"], 0) + hit
            else:
                attack = scores["attack"]
                attack[row["AttackName"]] = attack.get(row["AttackName"], 0) + (not correct)
    return scores


def _piece_starts(run: Path) -> dict[str, float]:
    with sqlite3.connect(run / "store.sqlite") as db:
        return dict(db.execute("SELECT piece_id, started_at FROM pieces"))


@pytest.fixture(scope="module")
def competition(tmp_path_factory) -> dict[str, Path]:
    """The corpus, its late entries, a fresh run on both, and a run on the corpus then the late entries added."""
    root = tmp_path_factory.mktemp("organizer")
    dataset = make_small_dataset(root / "data", 20)
    corpus = corpus_module.write_corpus(root / "received")
    late = corpus_module.write_corpus(root / "late", late=True)
    _run(root / "fresh", dataset, corpus.folder, late.folder)
    _run(root / "incremental", dataset, corpus.folder)
    before = _piece_starts(root / "incremental")
    _run(root / "incremental", dataset, corpus.folder, late.folder)
    return {"root": root, "dataset": dataset, "corpus": corpus, "late": late, "before": before}


def test_intake_sorts_admits_and_refuses_with_reasons(competition):
    run, corpus, late = competition["root"] / "fresh", competition["corpus"], competition["late"]
    manifest = json.loads((run / "manifest.json").read_text())
    admitted = {s["id"]: kind for kind, entries in manifest["submissions"].items() for s in entries}
    assert admitted == {**corpus.admitted, **late.admitted}
    assert len(admitted) + len(corpus.refused) >= 28
    reasons = {entry["id"]: entry["error"] for entry in manifest["left_out"]}
    assert set(reasons) == set(corpus.refused)
    for sub_id, fragment in corpus.refused.items():
        assert fragment in reasons[sub_id] and "\n" not in reasons[sub_id], sub_id
    entries = {s["id"]: s for kind in manifest["submissions"].values() for s in kind}
    for sub_id, (name, team) in corpus.names.items():
        assert (entries[sub_id]["name"], entries[sub_id]["team"]) == (name, team)
    assert all(len(entry["sha256"]) == 64 and entry["added"] for entry in entries.values())
    results = json.loads((run / "results.json").read_text())
    for sub_id in corpus.incomplete:
        assert results["failures"][sub_id]["pieces_failed"] > 0, sub_id


def test_scores_equal_an_independent_count(competition):
    run = competition["root"] / "fresh"
    results = json.loads((run / "results.json").read_text())
    assert results["scores"] == independent_scores(run)


def test_late_entries_run_only_the_new_work_and_score_as_a_fresh_run(competition):
    root = competition["root"]
    for name in NIPS_FILES:
        assert (root / "incremental" / name).read_bytes() == (root / "fresh" / name).read_bytes(), name
    after = _piece_starts(root / "incremental")
    kept = {piece: start for piece, start in competition["before"].items() if after.get(piece) == start}
    assert kept == competition["before"], "a piece of the first run was run again"
    new = set(after) - set(competition["before"])
    late_ids = {i for ids in corpus_module.LATE.values() for i in ids}
    new_attack_subs = {p.split("/")[1] for p in new if not p.startswith("defense/")}
    assert new_attack_subs == late_ids - set(corpus_module.LATE["defense"])


def test_exclude_rescores_without_running_anything(competition, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(competition["root"] / "incremental", run)
    before = _piece_starts(run)
    corpus, late = competition["corpus"], competition["late"]
    results = _run(run, competition["dataset"], corpus.folder, late.folder, exclude=("noop", "mean20"))
    assert _piece_starts(run) == before
    assert results["excluded"] == ["mean20", "noop"]
    assert "noop" not in results["scores"]["attack"] and "mean20" not in results["scores"]["defense"]
    assert not {"noop", "mean20"} & set(results["failures"]), "an excluded submission's pieces are not this run's"
    assert results["scores"] == independent_scores(run)


def test_drop_incomplete_ranks_without_the_broken(competition, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(competition["root"] / "incremental", run)
    corpus, late = competition["corpus"], competition["late"]
    results = _run(run, competition["dataset"], corpus.folder, late.folder, drop_incomplete=True)
    assert results["dropped_incomplete"] == sorted(corpus.incomplete)
    ranked = {sub_id for ranking in results["rankings"].values() for sub_id, _ in ranking}
    assert not ranked & corpus.incomplete
    assert results["scores"] == independent_scores(run)
    kept = _run(run, competition["dataset"], corpus.folder, late.folder)  # the default keeps them, failing
    assert kept["dropped_incomplete"] == [] and "crashes" in kept["scores"]["defense"]


def test_a_resubmission_under_the_same_id_runs_again(competition, tmp_path):
    run, received = tmp_path / "run", tmp_path / "received"
    shutil.copytree(competition["root"] / "incremental", run)
    shutil.copytree(competition["corpus"].folder, received)
    before = _piece_starts(run)
    old = json.loads((run / "manifest.json").read_text())
    script = received / "shift4" / "run.sh"
    script.write_text(script.read_text().replace("x + 4", "x - 4"))
    results = _run(run, competition["dataset"], received, competition["late"].folder)
    after = _piece_starts(run)
    rerun = {piece for piece in before if after.get(piece) != before[piece]}
    assert {p for p in rerun if not p.startswith("defense/")} == {p for p in before if p.split("/")[1] == "shift4"}
    manifest = json.loads((run / "manifest.json").read_text())
    digest = {s["id"]: s["sha256"] for kind in manifest["submissions"].values() for s in kind}
    old_digest = {s["id"]: s["sha256"] for kind in old["submissions"].values() for s in kind}
    assert {i for i in digest if digest[i] != old_digest[i]} == {"shift4"}
    assert results["scores"] == independent_scores(run)
