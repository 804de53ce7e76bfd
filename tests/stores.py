"""Building run stores and data sets by hand, through the store's own API: scoring and store tests need exact,
small contents that no real submission would produce on cue."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from sandbox.store import AdversarialRecord, PieceRecord, RunStore


def write_dataset(folder: Path, rows: list[tuple[str, int, int]], num_classes: int = 3) -> Path:
    """A real data set folder: dataset.csv, one 2x2 grey PNG per row, dataset.json with the class count."""
    (folder / "images").mkdir(parents=True)
    with (folder / "dataset.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["ImageId", "TrueLabel", "TargetClass"])
        writer.writerows(rows)
    for index, (image_id, _, _) in enumerate(rows):
        Image.fromarray(np.full((2, 2), index * 10, dtype=np.uint8)).save(folder / "images" / f"{image_id}.png")
    (folder / "dataset.json").write_text(f'{{"name": "hand", "num_classes": {num_classes}}}')
    return folder


def piece_record(piece_id: str, kind: str, submission_id: str, n_images: int, **overrides) -> PieceRecord:
    fields = dict(
        piece_id=piece_id,
        kind=kind,
        submission_id=submission_id,
        status="ok",
        n_images=n_images,
        epsilon=16 if kind != "defense" else None,
        exit_code=0,
        timed_out=False,
        oom_killed=False,
        wall_s=1.0,
        total_s=1.5,
        time_limit_s=60.0,
        failed_images=0,
        clipped_pixels=0,
        bad_lines=0,
        skipped_files="",
        isolation="test",
        error=None,
        stdout_tail="",
        stderr_tail="",
    )
    fields.update(overrides)
    return PieceRecord(**fields)


def record_attack(
    store: RunStore,
    attack_id: str,
    images: dict[str, str],
    targeted: bool = False,
    failed: frozenset[str] = frozenset(),
    **piece_fields,
) -> PieceRecord:
    """One attack piece: {image id: sha256 of the image it stored}; `failed` images are flagged as such."""
    kind = "targeted_attack" if targeted else "attack"
    record = piece_record(f"{kind}/{attack_id}/0", kind, attack_id, len(images), **piece_fields)
    store.record_attack_piece(
        record, [AdversarialRecord(attack_id, i, sha, 16, i in failed, 0) for i, sha in images.items()]
    )
    return record


def record_defense(store: RunStore, defense_id: str, labels: dict[str, int | None], **piece_fields) -> PieceRecord:
    record = piece_record(f"defense/{defense_id}/0", "defense", defense_id, len(labels), **piece_fields)
    store.record_defense_piece(record, labels)
    return record
