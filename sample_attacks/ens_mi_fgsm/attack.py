"""MI-FGSM (Dong et al., 2018) on an ensemble of two holdout models at once, their logits averaged: holdout_b
(model.pt, normally trained) and holdout_b_adv (holdout_b_adv.pt, adversarially trained), both model B (model.py).
A black-box (transfer) attack on every shipped defense: no defense was trained with either model. k = 10 steps of
epsilon / k, decay 1.0; the method is momentum.py's. The command line, the images and the batches are sample_io.py's.

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

from pathlib import Path

import numpy as np
import torch
from model import load_model
from momentum import LogitEnsemble, mi_fgsm
from sample_io import run_attack

HERE = Path(__file__).resolve().parent
# The sources beside model.pt (which sample_io loads): each is a model.py model with other weights.
OTHER_SOURCES = ("holdout_b_adv.pt",)


def ens_mi_fgsm(models: list[torch.nn.Module], x: np.ndarray, epsilon: int) -> np.ndarray:
    """uint8 [N, 28, 28] -> uint8 [N, 28, 28] within epsilon of x: MI-FGSM on the mean of the models' logits."""
    return mi_fgsm(LogitEnsemble(models), x, epsilon)


if __name__ == "__main__":
    others = [load_model(str(HERE / name)) for name in OTHER_SOURCES]
    run_attack(lambda model, x, epsilon: ens_mi_fgsm([model, *others], x, epsilon))
