"""Outputs of a run: the NIPS 2017 score files, results.json and report.html.

Everything here reads the store and the manifest only, so `sandbox report RUN` rebuilds it without running
anything. Every file is written atomically.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import jinja2
import numpy as np
from PIL import Image

from sandbox.dataset import DataSet, ImageRecord
from sandbox.outputs_read import encode_png
from sandbox.scoring import Scores, places, ranking
from sandbox.store import AdversarialRecord, PieceRecord, RunStore, atomic_file, write_atomically
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
    return buffer.getvalue().encode("utf-8", "replace")  # hostile names cannot stop the scores being written


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
    write_all_classification(out / "all_classification.csv", scores)


def write_all_classification(path: Path, scores: Scores) -> None:
    """Every (attack, defense, image) with its predicted label, written as it is made: the NIPS 2017 final's would
    be 83 million rows."""
    with atomic_file(path) as binary:
        text = io.TextIOWrapper(binary, "utf-8", "replace", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(
            ["AttackName", "IsTargeted", "DefenseName", "ImageId", "PredictedLabel", "TrueLabel", "TargetClass"]
        )
        writer.writerows(scores.classification_rows())  # csv writes None, a missing label, as an empty field
        text.flush()
        text.detach()  # the file stays open for `atomic_file` to flush to disk and rename


@dataclass
class SubmissionFailures:
    """One submission's failures and time, summed over its pieces: what results.json and the report show."""

    kind: str
    isolation: str
    pieces: int = 0
    wall_s: float = 0.0  # in its containers
    total_s: float = 0.0  # with the sandbox's work around them
    pieces_failed: int = 0  # then, of the failed pieces: why
    timeouts: int = 0
    crashes: int = 0
    oom_kills: int = 0
    errors: int = 0
    last_error: str | None = None
    failed_images: int = 0  # image by image
    clipped_pixels: int = 0
    bad_result_lines: int = 0
    skipped_output_files: int = 0
    log_tail: str = ""

    def add(self, piece: PieceRecord) -> None:
        self.pieces += 1
        self.failed_images += piece.failed_images
        self.clipped_pixels += piece.clipped_pixels
        self.bad_result_lines += piece.bad_lines
        self.skipped_output_files += _skipped_count(piece)
        self.wall_s = round(self.wall_s + piece.wall_s, 3)
        self.total_s = round(self.total_s + piece.total_s, 3)
        if piece.status != "ok":
            self.pieces_failed += 1
            self.timeouts += int(piece.timed_out)
            self.oom_kills += int(piece.oom_killed)
            self.errors += int(piece.error is not None)
            self.crashes += int(not piece.timed_out and piece.error is None)
            self.last_error = piece.error or (
                f"timed out after {piece.time_limit_s:g} s" if piece.timed_out else f"exit code {piece.exit_code}"
            )
            self.log_tail = piece.stderr_tail[-4000:] or piece.stdout_tail[-4000:]
        elif not self.log_tail:
            self.log_tail = piece.stderr_tail[-2000:]


def failures_by_submission(pieces: list[PieceRecord]) -> dict[str, SubmissionFailures]:
    """Per submission: failed images, timeouts, crashes, memory kills, clipping, time used, and a log tail."""
    summary: dict[str, SubmissionFailures] = {}
    for piece in pieces:
        summary.setdefault(piece.submission_id, SubmissionFailures(piece.kind, piece.isolation)).add(piece)
    return summary


def _skipped_count(piece: PieceRecord) -> int:
    """The count kept with the piece; a store made before it was kept has only the (comma-joined, cut) names."""
    if piece.skipped_count >= 0:
        return piece.skipped_count
    return len(piece.skipped_files.split(",")) if piece.skipped_files else 0


def build_results(scores: Scores, store: RunStore, manifest: dict) -> dict:
    """results.json: the scores, and the failures and time of the run's submissions only (an excluded
    submission's stored pieces are kept for later, but are not this run's)."""
    taking_part = {entry["id"] for entries in (manifest.get("submissions") or {}).values() for entry in entries}
    pieces = [piece for piece in store.pieces() if piece.submission_id in taking_part]
    overheads = [p.total_s - p.wall_s for p in pieces]
    return {
        "format": "adversarial-sandbox results 1",
        # The run writes its wall time into the manifest only when every piece is done: a report rebuilt from
        # an interrupted run counts what has not run yet as wrong answers, so its scores are not final.
        "complete": manifest.get("run_wall_s") is not None,
        "run_id": manifest.get("run_id"),
        "dataset": manifest.get("dataset"),
        "settings": manifest.get("settings"),
        "submissions": manifest.get("submissions"),
        "left_out": manifest.get("left_out"),
        "excluded": manifest.get("excluded", []),
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
        "accuracy_by_epsilon": accuracy_by_epsilon(scores, store),
        "rankings": {
            "defense": ranking(scores.defense_scores()),
            "attack": ranking(scores.attack_scores()),
            "targeted_attack": ranking(scores.targeted_attack_scores()),
        },
        "failures": {sub_id: asdict(f) for sub_id, f in failures_by_submission(pieces).items()},
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


def accuracy_by_epsilon(scores: Scores, store: RunStore) -> dict:
    """Per defense, how many images of each epsilon it labelled right over all attacks: how its accuracy falls as
    the budget grows. Only delivered images count (an unfinished piece has no epsilon yet)."""
    position = {image_id: k for k, image_id in enumerate(scores.image_ids)}
    epsilon_at = {a: np.full(scores.n_images, -1, dtype=np.int32) for a in scores.attacks + scores.targeted_attacks}
    images: Counter[int] = Counter()
    for r in store.adversarial():
        if r.submission_id in epsilon_at:
            images[r.epsilon] += 1
            if r.image_id in position:
                epsilon_at[r.submission_id][position[r.image_id]] = r.epsilon
    epsilons = sorted(images)
    correct = {d: dict.fromkeys(epsilons, 0) for d in scores.defenses}
    for (attack_id, defense_id), predicted in scores.predicted.items():
        right = epsilon_at[attack_id][predicted == scores.true_labels]
        for epsilon, count in zip(*np.unique(right[right >= 0], return_counts=True), strict=True):
            correct[defense_id][int(epsilon)] += int(count)
    return {
        "epsilons": epsilons,
        "images": [images[e] for e in epsilons],
        "correct": {d: [correct[d][e] for e in epsilons] for d in scores.defenses},
    }


# -- report.html: every helper below turns results, store and data set into plain values for the template, which
# -- only lays them out (autoescaped: ids, names, errors and logs come from submissions).

KINDS = (("defense", "Defenses"), ("attack", "Attacks"), ("targeted_attack", "Targeted attacks"))
_CHART_COLORS = ("#3b6fb6", "#c0392b", "#2e8b57", "#7b52ab", "#d68910", "#17a589", "#884ea0", "#5d6d7e")


def submission_anchor(kind: str, submission_id: str) -> str:
    """The fragment id of a submission's section: readable for plain ids, unique and URL-safe for any other. The
    hash follows a `~`, which no plain id holds, so no chosen id can take another submission's anchor."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", submission_id).strip("-")[:40]
    if slug == submission_id:
        return f"{kind}-{slug}"
    return f"{kind}-{slug}~{hashlib.sha256(submission_id.encode()).hexdigest()[:8]}"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def label_text(label: int | None, class_names: tuple[str, ...]) -> str:
    """A label as a person reads it: the class name where the data set has names, with the number kept."""
    if label is None:
        return "no valid label"
    if 0 <= label < len(class_names):
        return f"{class_names[label]} ({label})"
    return str(label)


def limits_hit(failures: dict | None) -> list[str]:
    """What stopped a submission's pieces, in words ("2 timeouts"): the first thing an organizer looks for. A memory
    kill is also counted in results.json's crashes (a non-zero exit); here it is named once, as what it was."""
    if not failures:
        return []
    counts = [
        (failures["timeouts"], "timeout", "timeouts"),
        (failures["oom_kills"], "memory kill", "memory kills"),
        (max(0, failures["crashes"] - failures["oom_kills"]), "crash", "crashes"),
        (failures["errors"], "error", "errors"),
    ]
    return [f"{n} {one if n == 1 else many}" for n, one, many in counts if n]


def _submission_entry(kind: str, entry: dict, results: dict) -> dict:
    sid = entry["id"]
    failures = results["failures"].get(sid)
    return {
        "kind": kind,
        "id": sid,
        "anchor": submission_anchor(kind, sid),
        "manifest": entry,
        "failures": failures,
        "limits_hit": limits_hit(failures),
        "time": results["timing"]["per_submission"].get(sid),
    }


def submission_sections(results: dict) -> list[dict]:
    """One group per kind, one entry per submission of the manifest, plus any the store ran that the manifest no
    longer names (a run folder reported with an edited manifest): nothing that ran is hidden."""
    manifest = results.get("submissions") or {}
    named = {entry["id"] for entries in manifest.values() for entry in entries}
    groups = []
    for kind, title in KINDS:
        entries = [_submission_entry(kind, entry, results) for entry in manifest.get(kind, [])]
        entries += [
            _submission_entry(kind, {"id": sid}, results)
            for sid, failures in sorted(results["failures"].items())
            if failures["kind"] == kind and sid not in named
        ]
        groups.append({"kind": kind, "title": title, "entries": entries})
    return groups


def _perturbation_gain(adversarial: np.ndarray, clean: np.ndarray) -> tuple[int, float | None]:
    """The largest pixel change and the factor that stretches it to 255 (None when nothing changed)."""
    if adversarial.shape != clean.shape:
        return 0, None
    delta = int(np.abs(adversarial.astype(np.int16) - clean.astype(np.int16)).max())
    return delta, (round(255 / delta, 4) if delta else None)


@dataclass(frozen=True)
class _Gallery:
    """What every gallery cell reads: the store, the data set's mode and class names, the defenses, their labels."""

    store: RunStore
    mode: str
    names: tuple[str, ...]
    defenses: list[str]
    labels: dict[tuple[str, str], int | None]


def _predictions(gallery: _Gallery, sha: str, record: ImageRecord, targeted: bool) -> list[dict]:
    """Each defense's label for one adversarial image: right, wrong, or (a targeted attack's aim) the target."""
    rows = []
    for defense in gallery.defenses:
        label = gallery.labels.get((defense, sha))
        if (defense, sha) not in gallery.labels:
            text, status = "not classified yet", "missing"
        elif label == record.true_label:
            text, status = label_text(label, gallery.names), "right"
        elif targeted and label == record.target_class:
            text, status = label_text(label, gallery.names), "hit"
        else:
            text, status = label_text(label, gallery.names), "wrong"
        rows.append({"defense": defense, "text": text, "status": status})
    return rows


def _gallery_cell(
    gallery: _Gallery, row: AdversarialRecord | None, clean: np.ndarray, record: ImageRecord, targeted: bool
) -> dict | None:
    """One adversarial image, its largest change and magnification (the page draws the magnified perturbation
    from the two embedded images with CSS, so no image is embedded twice), and each defense's label."""
    path = gallery.store.adversarial_path(row.sha256) if row else None
    if row is None or path is None or not path.is_file():
        return None
    png = path.read_bytes()
    with Image.open(io.BytesIO(png)) as image:
        pixels = np.asarray(image.convert(gallery.mode), dtype=np.uint8)
    delta, gain = _perturbation_gain(pixels, clean)
    return {
        "image": _data_uri(png),
        "epsilon": row.epsilon,
        "failed": row.failed,
        "max_delta": delta,
        "gain": gain,
        "predictions": _predictions(gallery, row.sha256, record, targeted),
    }


def gallery_rows(
    store: RunStore, dataset: DataSet, attacks: list[tuple[str, str]], defenses: list[str], size: int
) -> list[dict]:
    """The first `size` images: clean, then per (attack, kind) the adversarial image, perturbation and labels."""
    shown = [record.image_id for record in dataset.records[:size]]
    adversarial = {(r.submission_id, r.image_id): r for r in store.adversarial(shown)}
    labels = store.labels(sorted({r.sha256 for r in adversarial.values()}))  # not every label of the run
    gallery = _Gallery(store, dataset.mode, dataset.class_names, defenses, labels)
    rows = []
    for record in dataset.records[:size]:
        clean = dataset.load_pixels(record.image_id)
        cells = [
            _gallery_cell(gallery, adversarial.get((a, record.image_id)), clean, record, kind == "targeted_attack")
            for a, kind in attacks
        ]
        rows.append(
            {
                "image_id": record.image_id,
                "true_label": label_text(record.true_label, dataset.class_names),
                "target_class": label_text(record.target_class, dataset.class_names),
                "clean": _data_uri(encode_png(clean)),
                "cells": cells,
            }
        )
    return rows


def epsilon_chart(accuracy: dict, width: int = 520, height: int = 240) -> dict | None:
    """Accuracy against epsilon as SVG polylines (coordinates computed here, so the template only draws them);
    None with fewer than two epsilons, where there is no curve to draw."""
    epsilons, images = accuracy["epsilons"], accuracy["images"]
    if len(epsilons) < 2:
        return None
    left, right, top, bottom = 48, 150, 12, 34
    span = epsilons[-1] - epsilons[0]

    def x(epsilon: int) -> float:
        return round(left + (width - left - right) * (epsilon - epsilons[0]) / span, 1)

    def y(share: float) -> float:
        return round(top + (height - top - bottom) * (1 - share), 1)

    lines = []
    for index, (defense, correct) in enumerate(accuracy["correct"].items()):
        shares = [c / n if n else 0.0 for c, n in zip(correct, images, strict=True)]
        dots = [(x(e), y(s)) for e, s in zip(epsilons, shares, strict=True)]
        color = _CHART_COLORS[index % len(_CHART_COLORS)]
        lines.append(
            {"defense": defense, "points": " ".join(f"{a},{b}" for a, b in dots), "dots": dots, "color": color}
        )
    return {
        "width": width,
        "height": height,
        "lines": lines,
        "x_ticks": [(x(e), e) for e in epsilons],
        "y_ticks": [(y(s), f"{100 * s:.0f}%") for s in (0, 0.25, 0.5, 0.75, 1)],
        "plot": {"left": left, "right": width - right, "top": top, "bottom": height - bottom},
    }


def _heatmaps(results: dict) -> list[tuple[str, str, dict]]:
    matrices = results["matrices"]
    heatmaps = [
        ("Correctly classified images: attacks x defenses", "attack", matrices["correct_on_attacks"]),
        (
            "Correctly classified images: targeted attacks x defenses",
            "targeted_attack",
            matrices["correct_on_targeted_attacks"],
        ),
        ("Target class hits: targeted attacks x defenses", "targeted_attack", matrices["hit_target_class"]),
    ]
    return [heatmap for heatmap in heatmaps if heatmap[2]]


def write_report_html(out: Path, results: dict, store: RunStore, dataset: DataSet, gallery_size: int = 8) -> None:
    """A single offline page (no network, no script): leaderboards, heatmaps, accuracy against epsilon, a gallery
    with perturbations and labels, each submission's limits, failures, log and time, and what was left out."""
    attacks = [(a, "attack") for a in sorted(results["scores"]["attack"])]
    attacks += [(t, "targeted_attack") for t in sorted(results["scores"]["targeted_attack"])]
    defenses = sorted(results["scores"]["defense"])
    accuracy = results.get("accuracy_by_epsilon") or {"epsilons": [], "images": [], "correct": {}}
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True
    )
    environment.globals["anchor"] = submission_anchor
    sections = submission_sections(results)
    html = environment.get_template("report.html.j2").render(
        run_id=results["run_id"],
        dataset=results["dataset"],
        n_images=results["n_images"],
        settings=results["settings"],
        rankings=results["rankings"],
        places={kind: places(rows) for kind, rows in results["rankings"].items()},
        normalised=results["normalised_scores"],
        heatmaps=_heatmaps(results),
        defenses=defenses,
        gallery=gallery_rows(store, dataset, attacks, defenses, gallery_size),
        gallery_attacks=attacks,
        accuracy=accuracy,
        chart=epsilon_chart(accuracy),
        sections=sections,
        by_kind={group["kind"]: {e["id"]: e for e in group["entries"]} for group in sections},
        failures=results["failures"],
        left_out=results["left_out"] or [],
        excluded=results.get("excluded") or [],
        complete=results.get("complete", True),
        timeline=results["timing"]["timeline"],
        time_profile=results["timing"]["per_submission"],
    )
    write_atomically(out / "report.html", html.encode("utf-8", "replace"))  # no text can stop the report
