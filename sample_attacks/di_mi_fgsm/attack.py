"""DI-MI-FGSM (Xie et al., 2019) on the holdout model holdout_b: MI-FGSM whose every gradient is taken, with
probability 0.5, at a copy of the iterate shrunk to a random size in [25, 28] and zero-padded back to 28x28 at a
random offset. The draws come from SANDBOX_SEED and each image's pixels (momentum.py). The source model is whatever
model.py and model.pt hold: holdout_b's as shipped. The command line, the images and the batches are sample_io.py's.

Usage: SANDBOX_SEED=0 python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

import numpy as np
import torch
from momentum import mi_fgsm
from sample_io import run_attack, sandbox_seed

DIVERSITY_PROB = 0.5  # the paper's p
MIN_SIZE = 25  # the paper's smallest scale, 299 of 330, at 28 pixels: 28 * 299 / 330 = 25.4


def di_mi_fgsm(model: torch.nn.Module, x: np.ndarray, epsilon: int, seed: int = 0) -> np.ndarray:
    """uint8 [N, 28, 28] -> uint8 [N, 28, 28] within epsilon of x: MI-FGSM with diverse inputs."""
    return mi_fgsm(model, x, epsilon, diversity_prob=DIVERSITY_PROB, min_size=MIN_SIZE, seed=seed)


if __name__ == "__main__":
    run_attack(lambda model, x, epsilon: di_mi_fgsm(model, x, epsilon, sandbox_seed()))
