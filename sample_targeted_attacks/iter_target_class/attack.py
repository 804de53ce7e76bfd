"""Iterative target class method (Kurakin et al., 2017): k steps of epsilon / k toward the target class, each
projected back into the L-inf ball of radius epsilon around x and into [0, 255]:

    x_0 = x,   x_{t+1} = clip_{x, epsilon}(x_t - (epsilon / k) * sign(grad_x J(theta, x_t, y_target)))

in pixel units. Targets come from INPUT_DIR/target_class.csv (`FILENAME,TARGET` per line, no header), read by
sample_io.py, which also holds the command line, the images and the batches. The source model is whatever
model.py and model.pt hold: base_torch's as shipped (white-box against base_torch).

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

import numpy as np
import torch
import torch.nn.functional as F
from sample_io import run_targeted_attack


def iter_target_class(
    model: torch.nn.Module, x: np.ndarray, y_target: np.ndarray, epsilon: int, k: int = 10
) -> np.ndarray:
    """uint8 [N, H, W] -> uint8 [N, H, W] within epsilon of x, after k signed-gradient steps toward y_target."""
    x0 = torch.from_numpy(x.astype(np.float32)).unsqueeze(1)
    target = torch.from_numpy(y_target)
    x_adv = x0.clone()
    for _ in range(k):
        x_in = (x_adv / 255.0).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), target), x_in)
        x_adv = x_adv - (epsilon / k) * grad.sign()
        x_adv = torch.minimum(torch.maximum(x_adv, x0 - epsilon), x0 + epsilon).clamp(0, 255)
    return x_adv.round().squeeze(1).numpy().astype(np.uint8)


if __name__ == "__main__":
    run_targeted_attack(iter_target_class)
