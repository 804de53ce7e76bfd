"""What every torch sample submission shares: the command line, threads and seed, reading the PNGs, the batch loop.

A submission folder is all its container sees (it is mounted alone at /code), so each torch sample carries a copy
of this file. The single source is training/sample_io.py; `python3 training/train_all.py --sync-only` rewrites the
copies, and tests/test_sample_sources.py fails when one differs: edit the source, never a copy. An attack.py keeps
only its method, `method(model, x, epsilon) -> x_adv` on uint8 images [N, 28, 28], and hands it to `run_attack`
(or `run_targeted_attack`); the torch defenses' defense.py classifies with `load_source_model`.
"""

import csv
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from model import load_model  # the model.py beside this file: Python puts the script's folder first on sys.path
from PIL import Image

WEIGHTS = Path(__file__).resolve().parent / "model.pt"

Attack = Callable[[torch.nn.Module, np.ndarray, int], np.ndarray]
TargetedAttack = Callable[[torch.nn.Module, np.ndarray, np.ndarray, int], np.ndarray]


def num_threads() -> int:
    """The sandbox sets OMP_NUM_THREADS to the piece's CPU limit."""
    try:
        return max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1"))))
    except ValueError:
        return 1


def sandbox_seed() -> int:
    """The sandbox gives every piece an integer SANDBOX_SEED: randomness drawn from it repeats in a rerun."""
    return int(os.environ.get("SANDBOX_SEED", "0"))


def set_up_torch() -> None:
    """The piece's thread count, and torch seeded with SANDBOX_SEED (the shipped samples draw nothing from torch)."""
    torch.set_num_threads(num_threads())
    torch.manual_seed(sandbox_seed())


def load_source_model() -> torch.nn.Module:
    """model.py's model with model.pt's weights: the model the attack computes gradients on, or the defense."""
    return load_model(str(WEIGHTS))


def png_paths(input_dir: Path) -> list[Path]:
    """The PNGs of input_dir in sorted order, so the batches are the same in every run."""
    return sorted(p for p in input_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file())


def batches(paths: list[Path], batch_size: int = 100) -> Iterator[list[Path]]:
    """Consecutive slices of batch_size paths: memory stays small whatever the number of images."""
    for i in range(0, len(paths), batch_size):
        yield paths[i : i + batch_size]


def load_batch(paths: list[Path]) -> np.ndarray:
    """PNG files -> uint8 [N, 28, 28]; the model only reads 28x28 grayscale images."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            if image.mode != "L" or image.size != (28, 28):
                sys.exit(f"{path.name}: expected a 28x28 'L' image, got {image.size} {image.mode!r}")
            images.append(np.asarray(image))
    return np.stack(images)


def save_batch(paths: list[Path], images: np.ndarray, output_dir: Path) -> None:
    """Writes each uint8 image under its input's file name: the sandbox pairs outputs with inputs by name."""
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image).save(output_dir / path.name)


def load_targets(csv_path: Path) -> dict[str, int]:
    """target_class.csv (`FILENAME,TARGET` per line, no header) -> {file name: target class}."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        return {row[0].strip(): int(row[1]) for row in csv.reader(f) if len(row) >= 2}


def attack_arguments() -> tuple[Path, Path, int]:
    """`attack.py INPUT_DIR OUTPUT_DIR EPSILON`, as the sandbox calls every attack; sets torch up first."""
    if len(sys.argv) != 4:
        sys.exit("usage: attack.py INPUT_DIR OUTPUT_DIR EPSILON")
    set_up_torch()
    return Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])


def run_attack(method: Attack, batch_size: int = 100) -> None:
    """attack.py's entry point: method(model, x, epsilon) on every batch of INPUT_DIR, written to OUTPUT_DIR."""
    input_dir, output_dir, epsilon = attack_arguments()
    model = load_source_model()
    for batch in batches(png_paths(input_dir), batch_size):
        save_batch(batch, method(model, load_batch(batch), epsilon), output_dir)


def run_targeted_attack(method: TargetedAttack, batch_size: int = 100) -> None:
    """A targeted attack's entry point: method(model, x, y_target, epsilon) with the targets of
    INPUT_DIR/target_class.csv; an image without a target row is written unchanged, with a warning on stderr."""
    input_dir, output_dir, epsilon = attack_arguments()
    model = load_source_model()
    targets = load_targets(input_dir / "target_class.csv")
    paths = png_paths(input_dir)
    for missing in (p for p in paths if p.name not in targets):
        print(f"{missing.name}: no target class, left unchanged", file=sys.stderr)
    for batch in batches(paths, batch_size):
        x = load_batch(batch)
        has_target = np.array([p.name in targets for p in batch])
        x_adv = x.copy()
        if has_target.any():
            y_target = np.array([targets[p.name] for p in batch if p.name in targets], dtype=np.int64)
            x_adv[has_target] = method(model, x[has_target], y_target, epsilon)
        save_batch(batch, x_adv, output_dir)
