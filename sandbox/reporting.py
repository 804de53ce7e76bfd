"""Outputs of a run (SPEC 7): the NIPS 2017 score files, results.json and report.html.

Everything here reads the store and the manifest only, so `sandbox report RUN` rebuilds it without running
anything. Every file is written atomically.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import jinja2

from sandbox.dataset import DataSet
from sandbox.outputs_read import encode_png
from sandbox.scoring import Scores, ranking
from sandbox.store import PieceRecord, RunStore, write_atomically
from sandbox.timeline import time_profile, worker_timeline

NIPS_FILES = (
    "accuracy_on_attacks.csv",
    "accuracy_on_targeted_attacks.csv",
    "hit_target_class.csv",
    "defense_ranking.csv",
    "attack_ranking.csv",
    "targeted_attack_ranking.csv",
    "all_classification.csv",
)


def _csv_bytes(rows: list[list[object]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()


def _matrix(rows: list[str], defenses: list[str], cells: dict[str, dict[str, int]]) -> bytes:
    return _csv_bytes([["", *defenses], *[[row, *[cells[row][d] for d in defenses]] for row in rows]])


def _ranking_file(header: str, scores: dict[str, int]) -> bytes:
    return _csv_bytes([[header, "Score"], *[[name, score] for name, score in ranking(scores)]])


def write_nips_files(out: Path, scores: Scores) -> None:
    write_atomically(out / "accuracy_on_attacks.csv", _matrix(scores.attacks, scores.defenses, scores.correct))
    write_atomically(
        out / "accuracy_on_targeted_attacks.csv", _matrix(scores.targeted_attacks, scores.defenses, scores.correct)
    )
    write_atomically(out / "hit_target_class.csv", _matrix(scores.targeted_attacks, scores.defenses, scores.hits))
    write_atomically(out / "defense_ranking.csv", _ranking_file("DefenseName", scores.defense_scores()))
    write_atomically(out / "attack_ranking.csv", _ranking_file("AttackName", scores.attack_scores()))
    write_atomically(out / "targeted_attack_ranking.csv", _ranking_file("AttackName", scores.targeted_attack_scores()))
    rows: list[list[object]] = [
        ["AttackName", "IsTargeted", "DefenseName", "ImageId", "PredictedLabel", "TrueLabel", "TargetClass"]
    ]
    for c in scores.classifications:
        predicted = "" if c.predicted is None else c.predicted
        rows.append([c.attack_id, c.targeted, c.defense_id, c.image_id, predicted, c.true_label, c.target_class])
    write_atomically(out / "all_classification.csv", _csv_bytes(rows))


def failures_by_submission(pieces: list[PieceRecord]) -> dict[str, dict]:
    """Per submission: failed images, timeouts, crashes, memory kills, clipping, time used, and a log tail."""
    summary: dict[str, dict] = {}
    for piece in pieces:
        entry = summary.setdefault(
            piece.submission_id,
            {
                "kind": piece.kind,
                "pieces": 0,
                "pieces_failed": 0,
                "failed_images": 0,
                "timeouts": 0,
                "crashes": 0,
                "oom_kills": 0,
                "errors": 0,
                "clipped_pixels": 0,
                "bad_result_lines": 0,
                "skipped_output_files": 0,
                "wall_s": 0.0,
                "total_s": 0.0,
                "isolation": piece.isolation,
                "log_tail": "",
                "last_error": None,
            },
        )
        entry["pieces"] += 1
        entry["failed_images"] += piece.failed_images
        entry["clipped_pixels"] += piece.clipped_pixels
        entry["bad_result_lines"] += piece.bad_lines
        entry["skipped_output_files"] += len(piece.skipped_files.split(",")) if piece.skipped_files else 0
        entry["wall_s"] = round(entry["wall_s"] + piece.wall_s, 3)
        entry["total_s"] = round(entry["total_s"] + piece.total_s, 3)
        if piece.status != "ok":
            entry["pieces_failed"] += 1
            entry["timeouts"] += int(piece.timed_out)
            entry["oom_kills"] += int(piece.oom_killed)
            entry["errors"] += int(piece.error is not None)
            entry["crashes"] += int(not piece.timed_out and piece.error is None)
            entry["last_error"] = piece.error or (
                f"timed out after {piece.time_limit_s:g} s" if piece.timed_out else f"exit code {piece.exit_code}"
            )
            entry["log_tail"] = piece.stderr_tail[-4000:] or piece.stdout_tail[-4000:]
        elif not entry["log_tail"]:
            entry["log_tail"] = piece.stderr_tail[-2000:]
    return summary


def build_results(scores: Scores, store: RunStore, manifest: dict) -> dict:
    pieces = store.pieces()
    overheads = [p.total_s - p.wall_s for p in pieces]
    return {
        "format": "adversarial-sandbox results 1",
        "run_id": manifest.get("run_id"),
        "dataset": manifest.get("dataset"),
        "settings": manifest.get("settings"),
        "submissions": manifest.get("submissions"),
        "left_out": manifest.get("left_out"),
        "n_images": scores.n_images,
        "matrices": {
            "correct_on_attacks": {a: scores.correct[a] for a in scores.attacks},
            "correct_on_targeted_attacks": {t: scores.correct[t] for t in scores.targeted_attacks},
            "hit_target_class": scores.hits,
        },
        "scores": {
            "defense": scores.defense_scores(),
            "attack": scores.attack_scores(),
            "targeted_attack": scores.targeted_attack_scores(),
        },
        "normalised_scores": scores.normalised(),
        "rankings": {
            "defense": ranking(scores.defense_scores()),
            "attack": ranking(scores.attack_scores()),
            "targeted_attack": ranking(scores.targeted_attack_scores()),
        },
        "failures": failures_by_submission(pieces),
        "timing": {
            "pieces": len(pieces),
            "submission_wall_s": round(sum(p.wall_s for p in pieces), 3),
            "piece_total_s": round(sum(p.total_s for p in pieces), 3),
            "mean_overhead_s": round(sum(overheads) / len(overheads), 3) if overheads else None,
            "run_wall_s": manifest.get("run_wall_s"),
            "per_submission": time_profile(pieces),
            "timeline": worker_timeline(pieces),
        },
    }


def write_results(out: Path, results: dict) -> None:
    write_atomically(out / "results.json", (json.dumps(results, indent=2, sort_keys=False) + "\n").encode())


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def write_report_html(out: Path, results: dict, store: RunStore, dataset: DataSet, gallery_size: int = 8) -> None:
    """A single offline page: leaderboards, heatmaps, a clean-vs-adversarial gallery, failures and log tails."""
    attacks = sorted(results["scores"]["attack"]) + sorted(results["scores"]["targeted_attack"])
    defenses = sorted(results["scores"]["defense"])
    by_attack: dict[tuple[str, str], str] = {(r.submission_id, r.image_id): r.sha256 for r in store.adversarial()}
    gallery = []
    for record in dataset.records[:gallery_size]:
        cells = []
        for attack in attacks:
            sha = by_attack.get((attack, record.image_id))
            path = store.adversarial_path(sha) if sha else None
            cells.append(_data_uri(path.read_bytes()) if path and path.is_file() else None)
        clean = _data_uri(encode_png(dataset.load_pixels(record.image_id)))
        gallery.append({"image_id": record.image_id, "true_label": record.true_label, "clean": clean, "cells": cells})
    matrices = results["matrices"]
    heatmaps = [
        ("Correctly classified images: attacks x defenses", matrices["correct_on_attacks"]),
        ("Correctly classified images: targeted attacks x defenses", matrices["correct_on_targeted_attacks"]),
        ("Target class hits: targeted attacks x defenses", matrices["hit_target_class"]),
    ]
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True
    )
    html = environment.get_template("report.html.j2").render(
        run_id=results["run_id"],
        dataset=results["dataset"],
        n_images=results["n_images"],
        settings=results["settings"],
        rankings=results["rankings"],
        normalised=results["normalised_scores"],
        heatmaps=[(title, matrix) for title, matrix in heatmaps if matrix],
        defenses=defenses,
        gallery=gallery,
        gallery_attacks=attacks,
        failures=results["failures"],
        left_out=results["left_out"] or [],
        timeline=results["timing"]["timeline"],
        time_profile=results["timing"]["per_submission"],
    )
    write_atomically(out / "report.html", html.encode())
