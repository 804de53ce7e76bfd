"""Training loops for the torch sample models: standard, adversarial and ensemble adversarial training.

Adversarial training follows Kurakin et al. (2017) as Tramèr et al. (2018) use it: each batch is half clean
images and half adversarial examples of *other* images, and the loss is 0.5 * clean + 0.5 * adversarial.
Ensemble adversarial training (Tramèr et al., 2018, section 3.3 and Algorithm 1) takes the adversarial half, in turn
batch by batch, from the model being trained and from each static pre-trained model.

Pixels are floats in [0, 1] here; epsilons are given in pixel units (0..255), as the sandbox gives them to attacks.
"""

from __future__ import annotations

import csv
import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sample_models import TrainSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET_1K = REPO_ROOT / "dataset" / "fashion_mnist_1k"

Adversary = Callable[[torch.nn.Module, torch.Tensor, float], torch.Tensor]


def load_module(path: Path, name: str) -> ModuleType:
    """Imports a model.py by path: submissions' files are not package modules. Writes no __pycache__ into them."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 28, 28] in [0, 1], as the submissions feed their models."""
    return torch.tensor(images, dtype=torch.float32).div_(255.0).unsqueeze(1)


@dataclass
class Splits:
    """Training images, and the images a run reports on (the test split, or a validation split when tuning)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    eval_name: str


def load_splits(validation: int = 0, seed: int = 0) -> Splits:
    """All 60,000 training images, reporting on the test split; or, with `validation` > 0, a seeded split of the
    training images only (for tuning: the test images are never looked at)."""
    from sandbox.fashion_mnist import load_split

    train_images, train_labels = load_split("train")
    if validation > 0:
        order = np.random.default_rng(seed).permutation(len(train_images))
        held, kept = order[:validation], order[validation:]
        return Splits(
            to_tensor(train_images[kept]),
            torch.tensor(train_labels[kept], dtype=torch.int64),
            to_tensor(train_images[held]),
            torch.tensor(train_labels[held], dtype=torch.int64),
            f"validation ({validation} training images)",
        )
    test_images, test_labels = load_split("test")
    return Splits(
        to_tensor(train_images),
        torch.tensor(train_labels, dtype=torch.int64),
        to_tensor(test_images),
        torch.tensor(test_labels, dtype=torch.int64),
        "test",
    )


def load_dataset_1k(root: Path = DATASET_1K) -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped 1,000-image data set, for the accuracy figure the samples' READMEs record (never for tuning)."""
    with open(root / "dataset.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    images = np.stack([np.asarray(Image.open(root / "images" / f"{r['ImageId']}.png").convert("L")) for r in rows])
    return to_tensor(images), torch.tensor([int(r["TrueLabel"]) for r in rows])


# --- single-step attacks used while training (float tensors, no rounding needed: x and eps are on the 1/255 grid)


def _signed_gradient(model: torch.nn.Module, x: torch.Tensor, labels_of: Callable) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, labels_of(logits.detach())), x)
    return grad.sign()


def step_ll(model: torch.nn.Module, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Step-LL: x - eps * sign(grad CE(model(x), least-likely class)), clipped to [0, 1]."""
    grad_sign = _signed_gradient(model, x, lambda logits: logits.argmin(dim=1))
    return (x - epsilon / 255.0 * grad_sign).clamp_(0.0, 1.0).detach()


def fgsm(model: torch.nn.Module, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """FGSM with the model's own predicted label (no label leaking): x + eps * sign(grad CE(model(x), y_pred))."""
    grad_sign = _signed_gradient(model, x, lambda logits: logits.argmax(dim=1))
    return (x + epsilon / 255.0 * grad_sign).clamp_(0.0, 1.0).detach()


ADVERSARIES: dict[str, Adversary] = {"step_ll": step_ll, "fgsm": fgsm}


# --- training


@dataclass
class AdversarialTraining:
    """The adversarial half of each batch: `attack` at `epsilon` (pixel units) computed on the model being trained,
    or, in turn batch by batch, on each of `static_models` too (ensemble adversarial training)."""

    epsilon: float = 16.0
    attack: str = "step_ll"
    static_models: Sequence[torch.nn.Module] = field(default_factory=tuple)


def make_deterministic(seed: int, threads: int) -> torch.Generator:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum(
        int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, len(x), batch_size)
    )
    return correct / len(x)


def train(
    build_model: Callable[[], torch.nn.Module],
    splits: Splits,
    settings: TrainSettings,
    adversarial: AdversarialTraining | None = None,
    log: Callable[[str], None] = print,
) -> tuple[torch.nn.Module, float]:
    """Builds the model after seeding (its initial weights are part of the recipe) and trains it (Adam, cosine
    decay to 0, cross-entropy); returns it in eval mode with the training time in seconds."""
    shuffle = make_deterministic(settings.seed, settings.threads)
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    # Cosine decay to 0 over the fixed epoch count: the last epochs settle instead of jittering at full step size.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs)
    sources: list[torch.nn.Module] = [model]
    if adversarial is not None:
        for static in adversarial.static_models:
            static.eval().requires_grad_(False)
            sources.append(static)
        attack = ADVERSARIES[adversarial.attack]
    x_train, y_train = splits.x_train, splits.y_train
    start = time.perf_counter()
    step = 0
    for epoch in range(1, settings.epochs + 1):
        order = torch.randperm(len(x_train), generator=shuffle)
        total_loss = 0.0
        for i in range(0, len(order), settings.batch_size):
            batch = order[i : i + settings.batch_size]
            x, y = x_train[batch], y_train[batch]
            if adversarial is None:
                model.train()
                loss = F.cross_entropy(model(x), y)
            else:
                half = len(batch) // 2
                source = sources[step % len(sources)]  # Algorithm 1: the source rotates batch by batch
                model.eval()  # the attack sees the model without dropout, as an attacker would
                x_adv = attack(source, x[half:], adversarial.epsilon)
                model.train()
                logits = model(torch.cat([x[:half], x_adv]))
                loss = 0.5 * F.cross_entropy(logits[:half], y[:half]) + 0.5 * F.cross_entropy(logits[half:], y[half:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            step += 1
        schedule.step()
        log(
            f"epoch {epoch:2d}  loss {total_loss / len(x_train):.4f}  "
            f"{splits.eval_name} accuracy {accuracy(model, splits.x_eval, splits.y_eval):.4f}  "
            f"wall {time.perf_counter() - start:6.1f} s"
        )
    model.eval()
    return model, time.perf_counter() - start


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """A float32 state_dict: what every model.py's load_model reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}, path)
