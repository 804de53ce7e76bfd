"""Speed of piece layouts: how the piece sizes change a sandboxed run (the 2017 toolkit's own loop, outside the
sandbox, is `vs_2017_layout.py`).

Runs the shipped samples on the shipped data set, through real containers, in these layouts:
  default      --batch-size 100 --attack-piece-size 1000, defense pieces sized from the run, --jobs 1
  default-j2   the same with --jobs 2
  per-batch    one attack container per 100-image batch (--attack-piece-size 100), --jobs 1
  small-defense-pieces  defense pieces of at most 1000 distinct images (--defense-batch-size 1000), --jobs 1
and prints the wall time of each and the per-piece overhead (piece time outside the submission's container).

    python benchmarks/run_layouts.py [--out DIR] [--layouts default,default-j2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sandbox import RunOptions, load_dataset, run_competition
from sandbox.bundled import default_dataset_dir

LAYOUTS = {
    "default": dict(batch_size=100, attack_piece_size=1000, jobs=1),
    "default-j2": dict(batch_size=100, attack_piece_size=1000, jobs=2),
    "per-batch": dict(batch_size=100, attack_piece_size=100, jobs=1),
    "small-defense-pieces": dict(batch_size=100, attack_piece_size=1000, defense_batch_size=1000, jobs=1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sbx-bench-"))
    n_images = len(load_dataset(default_dataset_dir()).records)
    report = {}
    for name in args.layouts.split(","):
        layout = LAYOUTS[name]
        options = RunOptions(out=out / name, **layout)
        started = time.monotonic()
        result = run_competition(options)
        wall = time.monotonic() - started
        timing = result.results["timing"]
        report[name] = {
            "wall_s": round(wall, 1),
            "pieces": timing["pieces"],
            "submission_wall_s": timing["submission_wall_s"],
            "mean_overhead_s": timing["mean_overhead_s"],
            "images_per_s": round(n_images * (1 + len(result.results["scores"]["attack"])) / wall, 1),
            "scores": result.results["scores"],
        }
        print(
            f"{name:11s} wall {wall:7.1f} s  pieces {timing['pieces']:4d}  "
            f"mean overhead per piece {timing['mean_overhead_s']} s",
            flush=True,
        )
    (out / "layouts.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"details: {out / 'layouts.json'}")


if __name__ == "__main__":
    main()
