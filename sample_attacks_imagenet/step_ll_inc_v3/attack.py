"""Step-LL (Kurakin et al., 2017): one step of size epsilon towards the source model's least-likely class.

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


def step_ll(model: torch.nn.Module, x: np.ndarray, epsilon: int) -> np.ndarray:
    """One step of size epsilon that lowers the loss of the least-likely class (makes it likelier)."""
    x_in = torch.from_numpy(x).float().to(device()).requires_grad_(True)
    out = logits(model, x_in)
    loss = F.cross_entropy(out, out.argmin(dim=1).detach())
    (grad,) = torch.autograd.grad(loss, x_in)
    return to_uint8_within(x, x_in - epsilon * grad.sign(), epsilon)


if __name__ == "__main__":
    run_attack(step_ll)
