"""A torch defense: classifies every PNG of INPUT_DIR with the model of model.py and the weights of model.pt.

The same file serves base_torch, adv_torch and ens_adv_torch, which differ only in their weights (how each was
trained: its README.md). The single source is sample_defenses/base_torch/defense.py; `python3
training/train_all.py --sync-only` copies it into the other two, and tests/test_sample_sources.py checks the
copies. Threads, seed, the model and the file list are sample_io.py's.

Usage: python3 defense.py INPUT_DIR OUTPUT_FILE   (writes `FILENAME,LABEL` per image, no header)
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sample_io import batches, load_source_model, png_paths, set_up_torch


def load_inputs(paths: list[Path]) -> torch.Tensor:
    """PNG files -> float [N, 1, 28, 28] in [0, 1]."""
    pixels = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32) for p in paths])
    return torch.from_numpy(pixels / 255.0).unsqueeze(1)


@torch.no_grad()
def classify(input_dir: Path, output_file: Path, batch_size: int = 100) -> None:
    """Writes one `FILENAME,LABEL` line per PNG, batch by batch so memory stays small."""
    model = load_source_model()
    paths = png_paths(input_dir)
    with open(output_file, "w", newline="") as out:
        for batch in batches(paths, batch_size):
            labels = model(load_inputs(batch)).argmax(dim=1).tolist()
            out.writelines(f"{p.name},{label}\n" for p, label in zip(batch, labels, strict=True))


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: defense.py INPUT_DIR OUTPUT_FILE")
    set_up_torch()
    classify(Path(sys.argv[1]), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
