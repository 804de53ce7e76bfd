"""The sandbox against the NIPS 2017 development toolkit's loop, on the same machine, samples and images, in one run.

The 2017 loop, re-implemented faithfully (one `docker run` per submission, one after another, no limits):
  - each attack once over the whole data set: `/input_images` (the images under their real names, plus
    `target_class.csv` for targeted attacks), `/output_images`, `/code`, working directory `/code`;
  - every attack's outputs clipped to epsilon and copied into one folder;
  - each defense once over that folder: `/input_images`, `/output_data` (`result.csv`), `/code`.
Then `sandbox run --jobs 1` and `--jobs 2` (or the --jobs values given) on the same data set. Prints wall times,
ratios, container counts and the orchestration overhead (split into the sandbox's own work and idle workers),
and checks that the deterministic attacks' rows of the accuracy matrix agree between the loop and the sandbox.

    python benchmarks/vs_2017_layout.py [--images 500] [--jobs 1,2] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import docker
import numpy as np
from PIL import Image

from sandbox import RunOptions, load_dataset, run_competition
from sandbox.bundled import default_dataset_dir, sample_dirs
from sandbox.dataset import subset_dataset
from sandbox.submission import load_submissions

# Their outputs depend on nothing but the pixels: the loop and the sandbox must give the same matrix rows.
DETERMINISTIC = ("noop", "fgsm", "step_ll", "iter_fgsm", "fgsm_holdout", "step_ll_holdout", "fgsm_keras")
EPSILON = 16


def _run_container(client, image: str, code: Path, entry: str, mounts: dict[str, str], args: list[str]) -> None:
    volumes = {str(code): {"bind": "/code", "mode": "ro"}}
    volumes.update({host: {"bind": inside, "mode": "rw"} for host, inside in mounts.items()})
    client.containers.run(
        image, args, entrypoint=[f"./{entry}"], working_dir="/code", volumes=volumes, remove=True, network_mode="none"
    )


def loop_2017(dataset_dir: Path, work: Path) -> tuple[float, dict[str, dict[str, int]], int]:
    """Returns (wall seconds, {attack: {defense: correct}}, containers started)."""
    client = docker.from_env(timeout=3600)
    dataset = load_dataset(dataset_dir)
    subs = {
        kind: load_submissions(sample_dirs(kind), kind, None).submissions
        for kind in ("attack", "targeted_attack", "defense")
    }
    started = time.monotonic()
    inputs = work / "dataset"
    inputs.mkdir(parents=True)
    for record in dataset.records:
        shutil.copyfile(dataset.image_path(record.image_id), inputs / f"{record.image_id}.png")
    targeted_inputs = work / "dataset_targeted"
    shutil.copytree(inputs, targeted_inputs)
    (targeted_inputs / "target_class.csv").write_text(
        "".join(f"{r.image_id}.png,{r.target_class}\n" for r in dataset.records)
    )
    all_adv = work / "all_adversarial"
    all_adv.mkdir()
    containers = 0
    for kind in ("attack", "targeted_attack"):
        for sub in subs[kind]:
            out = work / "attacks" / sub.id
            out.mkdir(parents=True)
            out.chmod(0o777)
            source = targeted_inputs if kind == "targeted_attack" else inputs
            mounts = {str(source): "/input_images", str(out): "/output_images"}
            args = ["/input_images", "/output_images", str(EPSILON)]
            _run_container(client, sub.metadata.container, sub.root, sub.metadata.entry_point, mounts, args)
            containers += 1
            for record in dataset.records:  # clip and copy, as the toolkit did
                clean = dataset.load_pixels(record.image_id).astype(np.int16)
                path = out / f"{record.image_id}.png"
                adv = np.asarray(Image.open(path).convert(dataset.mode)).astype(np.int16) if path.is_file() else clean
                clipped = np.clip(adv, np.clip(clean - EPSILON, 0, 255), np.clip(clean + EPSILON, 0, 255))
                Image.fromarray(clipped.astype(np.uint8)).save(all_adv / f"{sub.id}__{record.image_id}.png")
    correct: dict[str, dict[str, int]] = {}
    truth = {f"{r.image_id}.png": r.true_label for r in dataset.records}
    for sub in subs["defense"]:
        out = work / "defenses" / sub.id
        out.mkdir(parents=True)
        out.chmod(0o777)
        mounts = {str(all_adv): "/input_images", str(out): "/output_data"}
        _run_container(
            client,
            sub.metadata.container,
            sub.root,
            sub.metadata.entry_point,
            mounts,
            ["/input_images", "/output_data/result.csv"],
        )
        containers += 1
        for name, label in csv.reader(io.StringIO((out / "result.csv").read_text())):
            attack, image = name.split("__", 1)
            hit = int(label) == truth[image]
            correct.setdefault(attack, {}).setdefault(sub.id, 0)
            correct[attack][sub.id] += hit
    return time.monotonic() - started, correct, containers


def overhead_parts(store: Path, wall: float, jobs: int) -> dict[str, float]:
    """(wall - container time / workers) / wall, split into its two causes (fractions of the wall time):
    - sandbox work: what a worker does for a piece around its container (inputs, container creation, reading the
      outputs back), plus the run's own start and end;
    - idle workers: a worker with nothing to start (the attack phase ending on another worker, the last pieces)."""
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT worker, started_at, ended_at, wall_s FROM pieces").fetchall()
    span = max(r[2] for r in rows) - min(r[1] for r in rows)
    held: dict[str, float] = {}
    for worker, started, ended, _ in rows:
        held[worker] = held.get(worker, 0.0) + ended - started
    around = sum(ended - started - container for _, started, ended, container in rows) / jobs
    idle = sum(span - busy for busy in held.values()) / jobs + (jobs - len(held)) * span / jobs
    return {"sandbox_work": (around + wall - span) / wall, "idle_workers": idle / wall}


def sandbox_run(dataset_dir: Path, out: Path, jobs: int) -> tuple[float, dict[str, dict[str, int]], dict]:
    started = time.monotonic()
    # The library's defaults, as `sandbox run --jobs N` gets them (CPUs: the cores shared among the workers).
    options = RunOptions(dataset=dataset_dir, out=out, jobs=jobs, epsilon=(EPSILON,))
    result = run_competition(options)
    wall = time.monotonic() - started
    rows = list(csv.reader((out / "accuracy_on_attacks.csv").open()))
    defenses = rows[0][1:]
    correct = {row[0]: {d: int(v) for d, v in zip(defenses, row[1:], strict=True)} for row in rows[1:]}
    return wall, correct, result.results["timing"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--jobs", default="1,2", help="the sandbox's --jobs values to measure")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sbx-vs2017-"))
    dataset_dir = subset_dataset(default_dataset_dir(), out / "dataset", args.images)

    loop_wall, loop_correct, loop_containers = loop_2017(dataset_dir, out / "loop2017")
    print(f"2017 loop        {loop_wall:7.1f} s  {loop_containers} containers", flush=True)
    report: dict = {"images": args.images, "2017_loop": {"wall_s": round(loop_wall, 1), "containers": loop_containers}}
    for jobs in [int(j) for j in args.jobs.split(",")]:
        wall, correct, timing = sandbox_run(dataset_dir, out / f"sandbox_j{jobs}", jobs)
        busy = timing["submission_wall_s"] / jobs
        overhead = (wall - busy) / wall
        parts = overhead_parts(out / f"sandbox_j{jobs}" / "store.sqlite", wall, jobs)
        disagree = [a for a in DETERMINISTIC if a in loop_correct and a in correct and loop_correct[a] != correct[a]]
        print(
            f"sandbox --jobs {jobs}  {wall:7.1f} s  {timing['pieces']} containers  "
            f"{loop_wall / wall:4.2f}x the loop  overhead {overhead:.1%} (sandbox work {parts['sandbox_work']:.1%}, "
            f"idle workers {parts['idle_workers']:.1%})  "
            f"deterministic rows {'agree' if not disagree else 'DISAGREE: ' + ', '.join(disagree)}",
            flush=True,
        )
        report[f"sandbox_jobs_{jobs}"] = {
            "wall_s": round(wall, 1),
            "containers": timing["pieces"],
            "speedup_vs_2017": round(loop_wall / wall, 2),
            "overhead": round(overhead, 3),
            "overhead_sandbox_work": round(parts["sandbox_work"], 3),
            "overhead_idle_workers": round(parts["idle_workers"], 3),
            "deterministic_rows_disagree": disagree,
        }
    (out / "vs_2017.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"details: {out / 'vs_2017.json'}")


if __name__ == "__main__":
    main()
