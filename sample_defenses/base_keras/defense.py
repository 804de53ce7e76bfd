"""base_keras defense: classifies every PNG of INPUT_DIR with the Keras CNN of model.py (model C), undefended.

Usage: python3 defense.py INPUT_DIR OUTPUT_FILE   (writes `FILENAME,LABEL` per image, no header)
"""

import os
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from model import load_model
from PIL import Image

WEIGHTS = Path(__file__).resolve().parent / "model.weights.h5"


def num_threads() -> int:
    """The sandbox sets OMP_NUM_THREADS to the piece's CPU limit."""
    try:
        return max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1"))))
    except ValueError:
        return 1


def load_batch(paths: list[Path]) -> np.ndarray:
    """PNG files -> float [N, 28, 28, 1] in [0, 1] (channels last)."""
    pixels = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32) for p in paths])
    return pixels[..., None] / 255.0


def classify(input_dir: Path, output_file: Path, batch_size: int = 100) -> None:
    """Writes one `FILENAME,LABEL` line per PNG, batch by batch so memory stays small."""
    model = load_model(str(WEIGHTS))
    paths = sorted(p for p in input_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    with open(output_file, "w", newline="") as out:
        for i in range(0, len(paths), batch_size):
            batch = paths[i : i + batch_size]
            labels = np.argmax(model(load_batch(batch), training=False).numpy(), axis=1).tolist()
            out.writelines(f"{p.name},{label}\n" for p, label in zip(batch, labels, strict=True))


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: defense.py INPUT_DIR OUTPUT_FILE")
    tf.config.threading.set_intra_op_parallelism_threads(num_threads())
    tf.config.threading.set_inter_op_parallelism_threads(1)
    classify(Path(sys.argv[1]), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
