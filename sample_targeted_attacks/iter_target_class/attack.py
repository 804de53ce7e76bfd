"""Iterative target class method (Kurakin et al., 2017): k steps of epsilon / k toward the target class, each
projected back into the L-inf ball of radius epsilon around x and into [0, 255]:

    x_0 = x,   x_{t+1} = clip_{x, epsilon}(x_t - (epsilon / k) * sign(grad_x J(theta, x_t, y_target)))

in pixel units. Targets come from INPUT_DIR/target_class.csv (`FILENAME,TARGET` per line, no header). The source
model is whatever model.py and model.pt hold: base_torch's as shipped (white-box against base_torch).

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

import csv
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from model import load_model
from PIL import Image

WEIGHTS = Path(__file__).resolve().parent / "model.pt"


def num_threads() -> int:
    """The sandbox sets OMP_NUM_THREADS to the piece's CPU limit."""
    try:
        return max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1"))))
    except ValueError:
        return 1


def load_targets(csv_path: Path) -> dict[str, int]:
    """target_class.csv -> {file name: target class}."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        return {row[0].strip(): int(row[1]) for row in csv.reader(f) if len(row) >= 2}


def load_batch(paths: list[Path]) -> np.ndarray:
    """PNG files -> uint8 [N, 28, 28]; the model only reads 28x28 grayscale images."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            if image.mode != "L" or image.size != (28, 28):
                sys.exit(f"{path.name}: expected a 28x28 'L' image, got {image.size} {image.mode!r}")
            images.append(np.asarray(image))
    return np.stack(images)


def iter_target_class(
    model: torch.nn.Module, x: np.ndarray, y_target: np.ndarray, epsilon: int, k: int = 10
) -> np.ndarray:
    """uint8 [N, H, W] -> uint8 [N, H, W] within epsilon of x, after k signed-gradient steps toward y_target."""
    x0 = torch.from_numpy(x.astype(np.float32)).unsqueeze(1)
    target = torch.from_numpy(y_target)
    x_adv = x0.clone()
    for _ in range(k):
        x_in = (x_adv / 255.0).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), target), x_in)
        x_adv = x_adv - (epsilon / k) * grad.sign()
        x_adv = torch.minimum(torch.maximum(x_adv, x0 - epsilon), x0 + epsilon).clamp(0, 255)
    return x_adv.round().squeeze(1).numpy().astype(np.uint8)


def attack(input_dir: Path, output_dir: Path, epsilon: int, batch_size: int = 100) -> None:
    model = load_model(str(WEIGHTS))
    targets = load_targets(input_dir / "target_class.csv")
    paths = sorted(p for p in input_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    for missing in (p for p in paths if p.name not in targets):
        print(f"{missing.name}: no target class, left unchanged", file=sys.stderr)
    for i in range(0, len(paths), batch_size):
        batch = paths[i : i + batch_size]
        x = load_batch(batch)
        has_target = np.array([p.name in targets for p in batch])
        x_adv = x.copy()
        if has_target.any():
            y_target = np.array([targets[p.name] for p in batch if p.name in targets], dtype=np.int64)
            x_adv[has_target] = iter_target_class(model, x[has_target], y_target, epsilon)
        for path, image in zip(batch, x_adv, strict=True):
            Image.fromarray(image).save(output_dir / path.name)


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit("usage: attack.py INPUT_DIR OUTPUT_DIR EPSILON")
    torch.set_num_threads(num_threads())
    attack(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))


if __name__ == "__main__":
    main()
