"""FGSM (Goodfellow et al., 2015): one signed-gradient step of size epsilon that raises the loss of the source model's
own prediction.

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


def fgsm(model: torch.nn.Module, x: np.ndarray, epsilon: int) -> np.ndarray:
    """uint8 [N, 299, 299, 3] -> the same, one signed-gradient step that raises the loss of the model's prediction."""
    x_in = torch.from_numpy(x).float().to(device()).requires_grad_(True)
    out = logits(model, x_in)
    loss = F.cross_entropy(out, out.argmax(dim=1).detach())
    (grad,) = torch.autograd.grad(loss, x_in)
    return to_uint8_within(x, x_in + epsilon * grad.sign(), epsilon)


if __name__ == "__main__":
    run_attack(fgsm)
