"""I-FGSM (Kurakin et al., 2017): 10 FGSM steps of epsilon/10, each projected back into the epsilon ball.

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


def iter_fgsm(model: torch.nn.Module, x: np.ndarray, epsilon: int, iterations: int = 10) -> np.ndarray:
    """`iterations` FGSM steps of epsilon / iterations against the clean prediction, each clipped to the ball."""
    x0 = torch.from_numpy(x).float().to(device())
    with torch.no_grad():
        y = logits(model, x0).argmax(dim=1)
    alpha = epsilon / iterations
    x_adv = x0.clone()
    for _ in range(iterations):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits(model, x_adv), y), x_adv)
        x_adv = (x_adv.detach() + alpha * grad.sign()).clamp(x0 - epsilon, x0 + epsilon).clamp(0, 255)
    return to_uint8_within(x, x_adv, epsilon)


if __name__ == "__main__":
    run_attack(iter_fgsm)
