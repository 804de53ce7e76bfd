"""Scoring at an organizer's scale: time and peak memory of the scores, the NIPS 2017 files and the accuracy by
epsilon, from a run store filled by hand (no container runs: this measures the scoring, not the submissions).

The store gets A attacks and T targeted attacks, each with a distinct image per data set image, and D defenses
with a label for every one of them: (A + T) x D x N classifications, as a finished run of that size holds. The
NIPS 2017 final was about 156 x 107 x 5000 = 83 million.

    python -m benchmarks.scoring_scale [--attacks 60] [--targeted 20] [--defenses 40] [--images 2000] [--out DIR]

(from the repository's root: it builds the store with the tests' helper `tests/stores.py`)
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sandbox.dataset import load_dataset
from sandbox.reporting import accuracy_by_epsilon, write_nips_files
from sandbox.scoring import compute_scores
from sandbox.store import AdversarialRecord, RunStore
from tests.stores import piece_record


def build(root: Path, attacks: int, defenses: int, images: int) -> None:
    """A data set of `images` 2x2 PNGs and a store holding every attack's images and every defense's labels."""
    folder = root / "data"
    (folder / "images").mkdir(parents=True)
    rows = [(f"i{k}", k % 10, (k + 1) % 10) for k in range(images)]
    with (folder / "dataset.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["ImageId", "TrueLabel", "TargetClass"])
        writer.writerows(rows)
    for k, (image_id, _, _) in enumerate(rows):
        Image.fromarray(np.full((2, 2), k % 256, dtype=np.uint8)).save(folder / "images" / f"{image_id}.png")
    (folder / "dataset.json").write_text(json.dumps({"name": "synthetic", "num_classes": 10}))
    store = RunStore(root / "run")
    for a in range(attacks):
        shas = [f"{a:05d}{k:07d}" for k in range(images)]
        record = piece_record(f"attack/a{a}/0", "attack", f"a{a}", images, epsilon=4 * (1 + a % 4))
        store.record_attack_piece(
            record, [AdversarialRecord(f"a{a}", f"i{k}", sha, 4 * (1 + a % 4), False, 0) for k, sha in enumerate(shas)]
        )
    for d in range(defenses):
        labels: dict[str, int | None] = {
            f"{a:05d}{k:07d}": (k + d + a) % 10 for a in range(attacks) for k in range(images)
        }
        store.record_defense_piece(piece_record(f"defense/d{d}/0", "defense", f"d{d}", len(labels)), labels)
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attacks", type=int, default=60)
    parser.add_argument("--targeted", type=int, default=20)
    parser.add_argument("--defenses", type=int, default=40)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="keep the store here (built once, reused)")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="sbx-scoring-"))
    if not (root / "run" / "store.sqlite").exists():
        started = time.monotonic()
        build(root, args.attacks + args.targeted, args.defenses, args.images)
        print(f"store built in {time.monotonic() - started:.1f} s: {root}")
    dataset = load_dataset(root / "data")
    store = RunStore(root / "run")
    attacks = [f"a{a}" for a in range(args.attacks)]
    targeted = [f"a{a}" for a in range(args.attacks, args.attacks + args.targeted)]
    defenses = [f"d{d}" for d in range(args.defenses)]
    timings = {}
    started = time.monotonic()
    scores = compute_scores(store, dataset, attacks, targeted, defenses)
    timings["scores_s"] = time.monotonic() - started
    started = time.monotonic()
    write_nips_files(root / "run", scores)
    timings["nips_files_s"] = time.monotonic() - started
    started = time.monotonic()
    accuracy_by_epsilon(scores, store)
    timings["accuracy_by_epsilon_s"] = time.monotonic() - started
    store.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    classifications = (args.attacks + args.targeted) * args.defenses * args.images
    print(
        f"{classifications:,} classifications: scores {timings['scores_s']:.1f} s, NIPS files "
        f"{timings['nips_files_s']:.1f} s, accuracy by epsilon {timings['accuracy_by_epsilon_s']:.1f} s; "
        f"peak memory {peak_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
