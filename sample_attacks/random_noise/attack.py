"""random_noise attack: adds random +-epsilon sign noise to every pixel, a model-free baseline.

x_adv = clip(x + epsilon * s, 0, 255) with s uniform in {-1, +1} per pixel (and channel), drawn for each image from
a NumPy Generator keyed by SANDBOX_SEED and the image's pixels: the noise depends on neither the (opaque, per-run)
file names nor the order of the images, so the same seed writes the same images in any run.

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def image_rng(seed: int, x: np.ndarray) -> np.random.Generator:
    """A generator keyed by the seed and the image's pixels."""
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes()).digest()
    return np.random.default_rng([seed, *(int(w) for w in np.frombuffer(digest, dtype=np.uint32))])


def random_sign_noise(x: np.ndarray, epsilon: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 image -> uint8 image within epsilon of it in L-inf."""
    signs = rng.integers(0, 2, size=x.shape, dtype=np.int16) * 2 - 1
    return np.clip(x.astype(np.int16) + epsilon * signs, 0, 255).astype(np.uint8)


def attack(input_dir: Path, output_dir: Path, epsilon: int, seed: int) -> None:
    """One image at a time; each image's noise depends only on the seed and its pixels."""
    for path in sorted(p for p in input_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file()):
        with Image.open(path) as image:
            image.load()
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")  # palette or alpha images: noise the colours, not the indices
        x = np.asarray(image)
        Image.fromarray(random_sign_noise(x, epsilon, image_rng(seed, x))).save(output_dir / path.name)


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit("usage: attack.py INPUT_DIR OUTPUT_DIR EPSILON")
    attack(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(os.environ.get("SANDBOX_SEED", "0")))


if __name__ == "__main__":
    main()
