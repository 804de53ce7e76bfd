"""I-FGSM (Kurakin et al., 2017), the iterative FGSM of Tramèr et al. (2018): k steps of epsilon / k, each projected
back into the L-inf ball of radius epsilon around x and into [0, 255]:

    x_0 = x,   x_{t+1} = clip_{x, epsilon}(x_t + (epsilon / k) * sign(grad_x J(theta, x_t, y_pred)))

in pixel units, where y_pred is the source model's prediction on the clean x (attacks are not given labels).
`least_likely=True` gives Iter-LL: steps that lower the loss of the least-likely class of x instead. The source
model is whatever model.py and model.pt hold: base_torch's as shipped (white-box against base_torch). The command
line, the images and the batches are sample_io.py's.

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

import numpy as np
import torch
import torch.nn.functional as F
from sample_io import run_attack


def iter_fgsm(
    model: torch.nn.Module, x: np.ndarray, epsilon: int, k: int = 10, least_likely: bool = False
) -> np.ndarray:
    """uint8 [N, H, W] -> uint8 [N, H, W] within epsilon of x, after k signed-gradient steps of epsilon / k."""
    x0 = torch.from_numpy(x.astype(np.float32)).unsqueeze(1)
    with torch.no_grad():
        logits = model(x0 / 255.0)
    label = logits.argmin(dim=1) if least_likely else logits.argmax(dim=1)
    direction = -1.0 if least_likely else 1.0
    x_adv = x0.clone()
    for _ in range(k):
        x_in = (x_adv / 255.0).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), label), x_in)
        x_adv = x_adv + direction * (epsilon / k) * grad.sign()
        x_adv = torch.minimum(torch.maximum(x_adv, x0 - epsilon), x0 + epsilon).clamp(0, 255)
    return x_adv.round().squeeze(1).numpy().astype(np.uint8)


if __name__ == "__main__":
    run_attack(iter_fgsm)
