"""Step-LL (Kurakin et al., 2017; Tramèr et al., 2018): one signed-gradient step toward the least-likely class.

x_adv = clip(x - epsilon * sign(grad_x J(theta, x, y_LL)), 0, 255) in pixel units, where y_LL = argmin of the source
model's logits on x. Needs no label. The source model is whatever model.py and model.pt hold: base_torch's in
step_ll (white-box against base_torch), the holdout model holdout_b's in step_ll_holdout (black-box), which ships
this file unchanged. The command line, the images and the batches are sample_io.py's.

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

import numpy as np
import torch
import torch.nn.functional as F
from sample_io import run_attack


def step_ll(model: torch.nn.Module, x: np.ndarray, epsilon: int) -> np.ndarray:
    """uint8 [N, H, W] -> uint8 [N, H, W], one signed-gradient step of size epsilon that lowers the loss of y_LL."""
    x_in = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1).requires_grad_(True)
    logits = model(x_in)
    y_ll = logits.argmin(dim=1).detach()
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y_ll), x_in)
    step = epsilon * grad.sign().squeeze(1).numpy().astype(np.int16)
    return np.clip(x.astype(np.int16) - step, 0, 255).astype(np.uint8)


if __name__ == "__main__":
    run_attack(step_ll)
