"""TI-MI-FGSM (Dong et al., 2019) on the holdout model holdout_b: MI-FGSM whose every gradient is smoothed by a
5x5 Gaussian kernel (the gradient of the loss averaged over shifts of up to two pixels; README.md says why 5 on
28x28 images, where the paper used 15 on 299x299). Deterministic. The source model is whatever model.py and model.pt
hold: holdout_b's as shipped. The command line, the images and the batches are sample_io.py's.

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

import numpy as np
import torch
from momentum import mi_fgsm
from sample_io import run_attack

KERNEL_SIZE = 5


def ti_mi_fgsm(model: torch.nn.Module, x: np.ndarray, epsilon: int) -> np.ndarray:
    """uint8 [N, 28, 28] -> uint8 [N, 28, 28] within epsilon of x: MI-FGSM with translation-invariant gradients."""
    return mi_fgsm(model, x, epsilon, kernel_size=KERNEL_SIZE)


if __name__ == "__main__":
    run_attack(ti_mi_fgsm)
