"""Step target class method (Kurakin et al., 2017), one step, white-box against the model in model.py.

x_adv = clip(x - epsilon * sign(grad_x J(theta, x, y_target)), 0, 255) in pixel units: one signed-gradient step
that lowers the cross-entropy of the target class. Targets come from INPUT_DIR/target_class.csv
(`FILENAME,TARGET` per line, no header), read by sample_io.py, which also holds the command line, the images and
the batches.

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

import numpy as np
import torch
import torch.nn.functional as F
from sample_io import run_targeted_attack


def step_target_class(model: torch.nn.Module, x: np.ndarray, y_target: np.ndarray, epsilon: int) -> np.ndarray:
    """uint8 [N, H, W] -> uint8 [N, H, W], one signed-gradient step of size epsilon toward y_target."""
    x_in = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1).requires_grad_(True)
    loss = F.cross_entropy(model(x_in), torch.from_numpy(y_target))
    (grad,) = torch.autograd.grad(loss, x_in)
    step = epsilon * grad.sign().squeeze(1).numpy().astype(np.int16)
    return np.clip(x.astype(np.int16) - step, 0, 255).astype(np.uint8)


if __name__ == "__main__":
    run_targeted_attack(step_target_class)
