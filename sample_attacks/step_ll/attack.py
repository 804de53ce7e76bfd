"""Step-LL (Kurakin et al., 2017; Tramèr et al., 2018): one signed-gradient step toward the least-likely class.

x_adv = clip(x - epsilon * sign(grad_x J(theta, x, y_LL)), 0, 255) in pixel units, where y_LL = argmin of the source
model's logits on x. Needs no label. The source model is whatever model.py and model.pt hold: base_torch's as
shipped (white-box against base_torch).

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

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


def load_batch(paths: list[Path]) -> np.ndarray:
    """PNG files -> uint8 [N, 28, 28]; the model only reads 28x28 grayscale images."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            if image.mode != "L" or image.size != (28, 28):
                sys.exit(f"{path.name}: expected a 28x28 'L' image, got {image.size} {image.mode!r}")
            images.append(np.asarray(image))
    return np.stack(images)


def step_ll(model: torch.nn.Module, x: np.ndarray, epsilon: int) -> np.ndarray:
    """uint8 [N, H, W] -> uint8 [N, H, W], one signed-gradient step of size epsilon that lowers the loss of y_LL."""
    x_in = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1).requires_grad_(True)
    logits = model(x_in)
    y_ll = logits.argmin(dim=1).detach()
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y_ll), x_in)
    step = epsilon * grad.sign().squeeze(1).numpy().astype(np.int16)
    return np.clip(x.astype(np.int16) - step, 0, 255).astype(np.uint8)


def attack(input_dir: Path, output_dir: Path, epsilon: int, batch_size: int = 100) -> None:
    model = load_model(str(WEIGHTS))
    paths = sorted(p for p in input_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    for i in range(0, len(paths), batch_size):
        batch = paths[i : i + batch_size]
        for path, x_adv in zip(batch, step_ll(model, load_batch(batch), epsilon), strict=True):
            Image.fromarray(x_adv).save(output_dir / path.name)


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit("usage: attack.py INPUT_DIR OUTPUT_DIR EPSILON")
    torch.set_num_threads(num_threads())
    attack(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))


if __name__ == "__main__":
    main()
