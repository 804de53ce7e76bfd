"""Targeted MI-FGSM (Dong et al., 2018) on the holdout model holdout_b: k = 10 steps of epsilon / k along the sign of
the accumulated gradient, decay 1.0, each lowering the loss of the target class; a black-box (transfer) targeted
attack on every shipped defense. Targets come from INPUT_DIR/target_class.csv, read by sample_io.py, which also holds
the command line, the images and the batches; the method is momentum.py's `mi_fgsm`. The source model is whatever
model.py and model.pt hold: holdout_b's as shipped.

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

import numpy as np
import torch
from momentum import mi_fgsm
from sample_io import run_targeted_attack


def mi_target_class(model: torch.nn.Module, x: np.ndarray, y_target: np.ndarray, epsilon: int) -> np.ndarray:
    """uint8 [N, 28, 28] -> uint8 [N, 28, 28] within epsilon of x, after 10 momentum steps toward y_target."""
    return mi_fgsm(model, x, epsilon, y_target=y_target)


if __name__ == "__main__":
    run_targeted_attack(mi_target_class)
