"""R+Step-LL (Tramèr et al., 2018, section 4.1): a random step, then a Step-LL step from the random point.

    x'    = x + alpha * sign(N(0, I))
    x_adv = x' - (epsilon - alpha) * sign(grad_x' J(theta, x', y_LL))

in pixel units, with alpha = epsilon / 2 as in the paper and y_LL the source model's least-likely class at x'. The
random step escapes the sharp curvature that adversarial training leaves around the data points (gradient
masking), where a plain single step fails. `least_likely=False` gives R+FGSM (the step raises the loss of the
model's prediction instead). Each image's noise is drawn from a generator seeded with SANDBOX_SEED and the image's
pixels, so it depends on neither the (opaque, per-run) file names nor the batching: the same seed gives the same
images in any run. The source model is whatever model.py and model.pt hold: base_torch's as shipped. The command
line, the images and the batches are sample_io.py's.

Usage: SANDBOX_SEED=0 python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from sample_io import run_attack, sandbox_seed


def gaussian_signs(x: np.ndarray, seed: int) -> np.ndarray:
    """sign(N(0, I)) for each image of uint8 [N, H, W], from a generator keyed by the seed and the image's pixels."""
    signs = np.empty(x.shape, dtype=np.float32)
    for i, image in enumerate(x):
        digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()
        rng = np.random.default_rng([seed, *(int(w) for w in np.frombuffer(digest, dtype=np.uint32))])
        signs[i] = np.sign(rng.standard_normal(image.shape))
    return signs


def rand_step_ll(
    model: torch.nn.Module,
    x: np.ndarray,
    epsilon: int,
    seed: int,
    alpha: float | None = None,
    least_likely: bool = True,
) -> np.ndarray:
    """uint8 [N, H, W] -> uint8 [N, H, W] within epsilon of x: a random step of alpha (default epsilon / 2), then a
    signed-gradient step of epsilon - alpha."""
    alpha = epsilon / 2 if alpha is None else alpha
    if not 0 <= alpha <= epsilon:
        raise ValueError(f"alpha must be in [0, epsilon], got {alpha}")
    x0 = torch.from_numpy(x.astype(np.float32)).unsqueeze(1)
    x_rand = (x0 + alpha * torch.from_numpy(gaussian_signs(x, seed)).unsqueeze(1)).clamp(0, 255)
    x_in = (x_rand / 255.0).requires_grad_(True)
    logits = model(x_in)
    label = logits.argmin(dim=1) if least_likely else logits.argmax(dim=1)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, label.detach()), x_in)
    direction = -1.0 if least_likely else 1.0  # toward y_LL, or away from the prediction
    x_adv = x_rand + direction * (epsilon - alpha) * grad.sign()
    x_adv = torch.minimum(torch.maximum(x_adv, x0 - epsilon), x0 + epsilon).clamp(0, 255)
    return x_adv.round().squeeze(1).numpy().astype(np.uint8)


if __name__ == "__main__":
    run_attack(lambda model, x, epsilon: rand_step_ll(model, x, epsilon, sandbox_seed()))
