"""The momentum iterative attacks that won the NIPS 2017 attack tracks and their later transfer refinements.

- MI-FGSM (Dong et al., CVPR 2018): k steps of epsilon / k along the sign of an accumulated gradient,
  g_{t+1} = decay * g_t + grad_t / mean(|grad_t|), which keeps the direction stable from step to step;
  an ensemble of source models is attacked through the average of their logits.
- DI (Xie et al., CVPR 2019): each step's gradient is taken, with probability p, at a randomly shrunk and padded
  copy of the iterate, so the perturbation does not fit one view of one model.
- TI (Dong et al., CVPR 2019): each step's gradient is smoothed by a Gaussian kernel, which is the gradient of the
  loss averaged over small translations of the image.

Pixel units throughout (0..255); the iterate stays in float, projected after every step into the L-inf ball of
radius epsilon around x and into [0, 255], and is rounded once at the end, so the output never leaves the ball.
The random draws of DI come from a generator per image, keyed by SANDBOX_SEED and the image's pixels: the same seed
writes the same images in any run, whatever the (opaque, per-run) file names and the batching.

One source file, sample_attacks/mi_fgsm/momentum.py, copied into every sample that runs it by
`python3 training/train_all.py --sync-only`: edit the source, never a copy.
"""

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class LogitEnsemble(nn.Module):
    """Several source models as one: the mean of their logits (Dong et al., 2018, eq. 6, equal weights)."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


def image_generators(x: np.ndarray, seed: int) -> list[np.random.Generator]:
    """One generator per image of uint8 [N, H, W], keyed by the seed and the SHA-256 of the image's pixels."""
    generators = []
    for image in x:
        digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()
        generators.append(np.random.default_rng([seed, *(int(w) for w in np.frombuffer(digest, dtype=np.uint32))]))
    return generators


def diverse_inputs(
    x01: torch.Tensor, generators: list[np.random.Generator], probability: float, min_size: int
) -> torch.Tensor:
    """DI's transformation for a model of fixed input size: with `probability`, each image is shrunk to a random
    size s in [min_size, W] (nearest neighbour, as Xie et al.) and zero-padded back to W x W at a random offset;
    otherwise it is left as it is. Differentiable in x01 (a sampling grid)."""
    n, _, height, width = x01.shape
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    for i, rng in enumerate(generators):
        applied = rng.random() < probability
        size = int(rng.integers(min_size, width + 1))
        top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        if applied and size < width:
            scale = width / size  # output coordinates -> input coordinates, in the [-1, 1] frame of affine_grid
            theta[i, 0] = torch.tensor([scale, 0.0, -scale * (-1 + (2 * left + size) / width)])
            theta[i, 1] = torch.tensor([0.0, scale, -scale * (-1 + (2 * top + size) / height)])
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    return F.grid_sample(x01, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def gaussian_kernel(size: int, nsig: float = 3.0) -> torch.Tensor:
    """TI's kernel, as in Dong et al.'s code: a normal density on `size` points of [-nsig, nsig], outer product,
    normalised to sum 1; shape [1, 1, size, size]."""
    t = np.linspace(-nsig, nsig, size)
    line = np.exp(-0.5 * t**2)
    kernel = np.outer(line, line)
    return torch.from_numpy((kernel / kernel.sum()).astype(np.float32))[None, None]


def mi_fgsm(
    model: nn.Module,
    x: np.ndarray,
    epsilon: int,
    k: int = 10,
    decay: float = 1.0,
    y_target: np.ndarray | None = None,
    diversity_prob: float = 0.0,
    min_size: int = 25,
    kernel_size: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """uint8 [N, H, W] -> uint8 [N, H, W] within epsilon of x: MI-FGSM, with DI where diversity_prob > 0 and TI
    where kernel_size > 0. Untargeted steps raise the loss of the source model's prediction on the clean x (attacks
    are not given labels); with y_target they lower the loss of the target class instead."""
    x0 = torch.from_numpy(x.astype(np.float32)).unsqueeze(1)
    if y_target is None:
        with torch.no_grad():
            label = model(x0 / 255.0).argmax(dim=1)
        direction = 1.0
    else:
        label, direction = torch.from_numpy(np.asarray(y_target, dtype=np.int64)), -1.0
    generators = image_generators(x, seed) if diversity_prob > 0 else []
    kernel = gaussian_kernel(kernel_size) if kernel_size > 0 else None
    momentum = torch.zeros_like(x0)
    x_adv = x0.clone()
    for _ in range(k):
        x_in = (x_adv / 255.0).requires_grad_(True)
        seen = diverse_inputs(x_in, generators, diversity_prob, min_size) if generators else x_in
        (grad,) = torch.autograd.grad(F.cross_entropy(model(seen), label, reduction="sum"), x_in)
        if kernel is not None:
            grad = F.conv2d(grad, kernel, padding=kernel_size // 2)
        momentum = decay * momentum + grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        x_adv = x_adv + direction * (epsilon / k) * momentum.sign()
        x_adv = torch.minimum(torch.maximum(x_adv, x0 - epsilon), x0 + epsilon).clamp(0, 255)
    return x_adv.round().squeeze(1).numpy().astype(np.uint8)
