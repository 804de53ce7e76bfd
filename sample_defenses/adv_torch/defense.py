"""adv_torch defense: classifies every PNG of INPUT_DIR with the model of model.py and the weights of model.pt.

Usage: python3 defense.py INPUT_DIR OUTPUT_FILE   (writes `FILENAME,LABEL` per image, no header)
"""

import os
import sys
from pathlib import Path

import numpy as np
import torch
from model import load_model
from PIL import Image

WEIGHTS = Path(__file__).resolve().parent / "model.pt"


def num_threads() -> int:
    """The sandbox sets OMP_NUM_THREADS to the piece's CPU limit."""
    try:
        return max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1"))))
    except ValueError:
        return 1


def load_batch(paths: list[Path]) -> torch.Tensor:
    """PNG files -> float [N, 1, 28, 28] in [0, 1]."""
    pixels = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32) for p in paths])
    return torch.from_numpy(pixels / 255.0).unsqueeze(1)


@torch.no_grad()
def classify(input_dir: Path, output_file: Path, batch_size: int = 100) -> None:
    """Writes one `FILENAME,LABEL` line per PNG, batch by batch so memory stays small."""
    model = load_model(str(WEIGHTS))
    paths = sorted(p for p in input_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    with open(output_file, "w", newline="") as out:
        for i in range(0, len(paths), batch_size):
            batch = paths[i : i + batch_size]
            labels = model(load_batch(batch)).argmax(dim=1).tolist()
            out.writelines(f"{p.name},{label}\n" for p, label in zip(batch, labels, strict=True))


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: defense.py INPUT_DIR OUTPUT_FILE")
    torch.set_num_threads(num_threads())
    torch.manual_seed(int(os.environ.get("SANDBOX_SEED", "0")))  # not random; seeded by habit
    classify(Path(sys.argv[1]), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
