"""Per-piece overhead: what a work piece costs beyond the submission's own time.

Runs an attack whose entry point does nothing (`exit 0`, in the sandbox's base image) as N one-image pieces,
and reports per piece: the total (input written, volume and keeper created, container started and waited for,
outputs read back, everything removed) and the part spent between the container's start and its exit. The
submission's own time is ~0, so the total is the overhead.

    python benchmarks/piece_overhead.py [--pieces 20]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from sandbox import Limits, RunOptions, run_competition
from sandbox.bundled import default_dataset_dir
from sandbox.dataset import subset_dataset
from sandbox.image_names import image_tag

DO_NOTHING = "#!/bin/sh\nexit 0\n"


def write_do_nothing_attack(attacks: Path) -> None:
    """An attack in the sandbox's base image whose entry point exits at once: its pieces cost only overhead."""
    folder = attacks / "nothing"
    folder.mkdir(parents=True)
    metadata = {"type": "attack", "container": image_tag("base"), "entry_point": "run.sh"}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    (folder / "run.sh").write_text(DO_NOTHING)
    (folder / "run.sh").chmod(0o755)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pieces", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sbx-overhead-") as tmp:
        root = Path(tmp)
        dataset = subset_dataset(default_dataset_dir(), root / "data", args.pieces)
        write_do_nothing_attack(root / "attacks")
        for kind in ("targeted", "defenses"):
            (root / kind).mkdir()
        options = RunOptions(
            attacks=(root / "attacks",),
            targeted_attacks=(root / "targeted",),
            defenses=(root / "defenses",),
            dataset=dataset,
            out=root / "run",
            batch_size=1,
            attack_piece_size=1,
            limits=Limits(cpus=1.0),
        )
        started = time.monotonic()
        run_competition(options)
        wall = time.monotonic() - started
        with sqlite3.connect(root / "run" / "store.sqlite") as db:
            rows = db.execute("SELECT total_s, wall_s FROM pieces").fetchall()
    totals, container = [r[0] for r in rows], [r[1] for r in rows]
    summary = {
        "pieces": len(rows),
        "run_wall_s": round(wall, 2),
        "piece_total_s_median": round(statistics.median(totals), 3),
        "container_start_to_exit_s_median": round(statistics.median(container), 3),
        "outside_container_s_median": round(
            statistics.median(t - c for t, c in zip(totals, container, strict=True)), 3
        ),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
