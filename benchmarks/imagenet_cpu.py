"""The ImageNet samples on CPU: seconds per image per sample, and how a piece splits into start-up and per-image work.

Each sample runs as one piece through the run's own piece code (`execute_attack` / `execute_defense`, the Docker
runtime, the weights folder mounted read-only) at two piece sizes, SMALL and LARGE images; then

    per image = (t_large - t_small) / (LARGE - SMALL)        start-up = t_small - SMALL * per image

where t is the container's wall time (start to exit), the shortest of --repeat runs: on a shared machine the
other work only ever adds time. The weights are randomly initialised (the samples'
`imagenet_io.py random-weights`): the real ones cannot be downloaded here, and the arithmetic is the same. The
images are a 299x299 data set built with `sandbox dataset from-folder` from generated pictures.

    python3 benchmarks/imagenet_cpu.py [--small 2] [--large 10] [--repeat 2] [--cpus 2] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import csv
import secrets
import tempfile
from pathlib import Path

import docker
import numpy as np
from PIL import Image

from sandbox.dataset import DataSet, load_dataset
from sandbox.from_folder import FolderOptions, build_from_folder
from sandbox.image_names import image_tag
from sandbox.pieces import RunContext, execute_attack, execute_defense
from sandbox.plan import AttackPiece
from sandbox.runtime import Limits
from sandbox.runtime.docker import DockerRuntime
from sandbox.submission import Submission, admit

REPO = Path(__file__).resolve().parent.parent
FOLDERS = tuple(REPO / f"sample_{kind}_imagenet" for kind in ("attacks", "targeted_attacks", "defenses"))


def make_dataset(root: Path, n: int) -> DataSet:
    rng = np.random.default_rng(2017)
    photos = root / "photos"
    photos.mkdir(parents=True)
    rows = [("file", "TrueLabel", "TargetClass")]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)).save(photos / f"p{i:03d}.png")
        rows.append((f"p{i:03d}.png", str(int(rng.integers(1, 1001))), str(int(rng.integers(1, 1001)))))
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    options = FolderOptions(num_classes=1001, label_convention="tf-slim-1001")
    return load_dataset(build_from_folder(photos, root / "labels.csv", root / "dataset", options).dataset.root)


def make_random_weights(folder: Path) -> None:
    folder.mkdir()
    docker.from_env().containers.run(
        image_tag("torch-cpu"),
        ["python3", "imagenet_io.py", "random-weights", "/out"],
        working_dir="/code",
        volumes={
            str(REPO / "sample_defenses_imagenet" / "inception_v3"): {"bind": "/code", "mode": "ro"},
            str(folder): {"bind": "/out", "mode": "rw"},
        },
        environment={"PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"},
        network_mode="none",
        remove=True,
    )


def piece_seconds(submission: Submission, ctx: RunContext, n: int, epsilon: int = 16) -> float:
    """The container's wall time for one piece of the first n images; raises when the piece did not succeed."""
    ids = tuple(r.image_id for r in ctx.dataset.records[:n])
    if submission.type == "defense":
        inputs = {i: ctx.dataset.image_path(i) for i in ids}
        outcome, _, _ = execute_defense(f"bench/{submission.id}/{n}", 0, submission, ctx, inputs)
    else:
        targeted = submission.type == "targeted_attack"
        piece = AttackPiece(f"bench/{submission.id}/{n}", submission.id, targeted, (0,), ids, epsilon, 0)
        outcome = execute_attack(piece, submission, ctx).outcome
    if outcome.exit_code != 0 or outcome.timed_out:
        raise SystemExit(f"{submission.id} on {n} images failed: {outcome.stderr_tail[-500:]}")
    return outcome.wall_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=2, help="Images in the small piece.")
    parser.add_argument("--large", type=int, default=10, help="Images in the large piece (100 in the issue).")
    parser.add_argument("--repeat", type=int, default=2, help="Runs of each piece; the shortest counts.")
    parser.add_argument("--cpus", type=float, default=2.0, help="CPUs of each container.")
    parser.add_argument("--only", nargs="*", default=None, help="Sample names to measure. Default: all.")
    args = parser.parse_args()
    limits = Limits(time_per_100_images=60_000, min_time=600, cpus=args.cpus, memory="6g")
    with tempfile.TemporaryDirectory(prefix="sbx-imagenet-") as tmp:
        root = Path(tmp)
        dataset = make_dataset(root, args.large)
        make_random_weights(root / "weights")
        runtime = DockerRuntime()
        ctx = RunContext(
            "bench-imagenet", root, secrets.token_hex(8), limits, dataset, runtime, weights=root / "weights"
        )
        sizes = f"({args.small} and {args.large} images, {args.cpus:g} CPUs)"
        print(f"{'sample':32} {'start-up s':>10} {'s/image':>8}   {sizes}")
        try:
            for folder in sorted(p for parent in FOLDERS for p in parent.iterdir()):
                if args.only and folder.name not in args.only:
                    continue
                admission = admit(folder)
                assert admission.submission is not None, admission.findings
                small = min(piece_seconds(admission.submission, ctx, args.small) for _ in range(args.repeat))
                large = min(piece_seconds(admission.submission, ctx, args.large) for _ in range(args.repeat))
                per_image = (large - small) / (args.large - args.small)
                startup = small - args.small * per_image
                times = f"(t = {small:.1f} s, {large:.1f} s)"
                print(f"{folder.name:32} {startup:10.1f} {per_image:8.2f}   {times}", flush=True)
        finally:
            runtime.cleanup_run("bench-imagenet")
            runtime.close()


if __name__ == "__main__":
    main()
