"""FGSM (Goodfellow et al., 2015): one signed-gradient step that raises the loss of the source model's prediction.

x_adv = clip(x + epsilon * sign(grad_x J(theta, x, y_pred)), 0, 255) in pixel units, where y_pred is the model's own
prediction on x (attacks are not given labels; Kurakin et al. (2017) note this also avoids label leaking). The
source model is whatever model.py and model.pt hold: base_torch's in fgsm (white-box against base_torch), the
holdout model holdout_b's in fgsm_holdout (black-box), which ships this file unchanged. The command line, the
images and the batches are sample_io.py's.

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

import numpy as np
import torch
import torch.nn.functional as F
from sample_io import run_attack


def fgsm(model: torch.nn.Module, x: np.ndarray, epsilon: int) -> np.ndarray:
    """uint8 [N, H, W] -> uint8 [N, H, W], one signed-gradient step of size epsilon that raises the loss."""
    x_in = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1).requires_grad_(True)
    logits = model(x_in)
    y_pred = logits.argmax(dim=1).detach()
    loss = F.cross_entropy(logits, y_pred)
    (grad,) = torch.autograd.grad(loss, x_in)
    step = epsilon * grad.sign().squeeze(1).numpy().astype(np.int16)
    return np.clip(x.astype(np.int16) + step, 0, 255).astype(np.uint8)


if __name__ == "__main__":
    run_attack(fgsm)
