"""R+Step-LL (Tramer et al., 2018): a random step of alpha = epsilon/2, then a Step-LL step of epsilon - alpha.

White-box against Inception v3 (`inception_v3.tf_in1k`, the source model), transferred to every other defense.
Gradients are taken in pixel units (0..255); every output pixel stays within epsilon of the clean one. Attacks are
not given labels: the untargeted ones start from the source model's own prediction. The command line, the model and
the images are imagenet_io.py's.

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

import numpy as np
import torch
import torch.nn.functional as F
from imagenet_io import device, logits, run_attack, to_uint8_within


def rand_step_ll(model: torch.nn.Module, x: np.ndarray, epsilon: int, alpha_ratio: float = 0.5) -> np.ndarray:
    """x' = x + alpha * sign(N(0, I)), then a Step-LL step of epsilon - alpha from x' (alpha = epsilon / 2).
    The noise is drawn on the CPU from torch's generator, seeded with SANDBOX_SEED: a rerun gives the same images."""
    alpha = alpha_ratio * epsilon
    x0 = torch.from_numpy(x).float().to(device())
    noise = torch.randn(x0.shape).to(device())
    x_in = (x0 + alpha * noise.sign()).clamp(0, 255).requires_grad_(True)
    out = logits(model, x_in)
    loss = F.cross_entropy(out, out.argmin(dim=1).detach())
    (grad,) = torch.autograd.grad(loss, x_in)
    return to_uint8_within(x, x_in - (epsilon - alpha) * grad.sign(), epsilon)


if __name__ == "__main__":
    run_attack(rand_step_ll)
