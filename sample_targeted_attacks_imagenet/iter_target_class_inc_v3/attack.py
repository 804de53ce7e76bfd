"""Iterative target class (Kurakin et al., 2017): 10 steps of epsilon/10 that lower the source model's loss for
each image's target class, each projected back into the epsilon ball.

White-box against Inception v3 (`inception_v3.tf_in1k`). The targets come from target_class.csv in the data set's
numbering and are converted to timm's 0..999 by imagenet_io.py (TF-Slim's 1..1000 minus 1 on the NIPS 2017 sets).

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

import numpy as np
import torch
import torch.nn.functional as F
from imagenet_io import device, logits, run_targeted_attack, to_uint8_within


def iter_target_class(
    model: torch.nn.Module, x: np.ndarray, y_target: np.ndarray, epsilon: int, iterations: int = 10
) -> np.ndarray:
    """uint8 [N, 299, 299, 3] and targets in 0..999 -> images whose source-model prediction moves to the target."""
    x0 = torch.from_numpy(x).float().to(device())
    y = torch.from_numpy(y_target).to(device())
    alpha = epsilon / iterations
    x_adv = x0.clone()
    for _ in range(iterations):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits(model, x_adv), y), x_adv)
        x_adv = (x_adv.detach() - alpha * grad.sign()).clamp(x0 - epsilon, x0 + epsilon).clamp(0, 255)
    return to_uint8_within(x, x_adv, epsilon)


if __name__ == "__main__":
    run_targeted_attack(iter_target_class)
