"""Trains the `base_torch` Fashion-MNIST model on the host and installs its weights into the samples that use it.

Reproducible: fixed seeds, deterministic algorithms, a fixed thread count, a fixed number of epochs (the test split
is only reported, never used to pick a model). Run from the repository root:

    PYTHONPATH=. python3 training/train_base_torch.py
"""

import argparse
import csv
import filecmp
import importlib.util
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFENSE_DIR = REPO_ROOT / "sample_defenses" / "base_torch"
# Every sample that attacks base_torch white-box ships an identical copy of model.py and model.pt.
ATTACK_DIRS = (
    REPO_ROOT / "sample_attacks" / "fgsm",
    REPO_ROOT / "sample_targeted_attacks" / "step_target_class",
)
DATASET_1K = REPO_ROOT / "dataset" / "fashion_mnist_1k"


def load_model_module() -> ModuleType:
    """Imports sample_defenses/base_torch/model.py, which is a submission file, not a package module."""
    spec = importlib.util.spec_from_file_location("base_torch_model", DEFENSE_DIR / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float [N, 1, 28, 28] in [0, 1], as the submissions feed the model."""
    return torch.tensor(images, dtype=torch.float32).div_(255.0).unsqueeze(1)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum(
        int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, len(x), batch_size)
    )
    return correct / len(x)


def load_dataset_1k(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped 1,000-image data set (dataset.csv + images/IMAGEID.png), for a second accuracy figure."""
    with open(root / "dataset.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    images = np.stack([np.asarray(Image.open(root / "images" / f"{r['ImageId']}.png").convert("L")) for r in rows])
    labels = torch.tensor([int(r["TrueLabel"]) for r in rows])
    return to_tensor(images), labels


def train(epochs: int, batch_size: int, learning_rate: float, seed: int, threads: int) -> Path:
    """Trains, reports per epoch, writes model.pt into the defense and copies it into the attacks."""
    from sandbox.fashion_mnist import load_split

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    shuffle = torch.Generator().manual_seed(seed)

    train_images, train_labels = load_split("train")
    test_images, test_labels = load_split("test")
    x_train, y_train = to_tensor(train_images), torch.tensor(train_labels, dtype=torch.int64)
    x_test, y_test = to_tensor(test_images), torch.tensor(test_labels, dtype=torch.int64)

    model = load_model_module().BaseTorchModel()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"train {len(x_train)} images, test {len(x_test)} images, {n_params} parameters, {threads} threads")
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    # Cosine decay to 0 over the fixed epoch count: the last epochs settle instead of jittering at full step size.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)

    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=shuffle)
        total_loss = 0.0
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
        schedule.step()
        test_acc = accuracy(model, x_test, y_test)
        print(
            f"epoch {epoch:2d}  loss {total_loss / len(x_train):.4f}  test accuracy {test_acc:.4f}  "
            f"wall {time.perf_counter() - start:6.1f} s",
            flush=True,
        )
    train_seconds = time.perf_counter() - start

    weights = DEFENSE_DIR / "model.pt"
    torch.save({k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}, weights)
    for attack_dir in ATTACK_DIRS:
        if not filecmp.cmp(DEFENSE_DIR / "model.py", attack_dir / "model.py", shallow=False):
            sys.exit(f"{attack_dir / 'model.py'} differs from {DEFENSE_DIR / 'model.py'}: copy it over first")
        shutil.copyfile(weights, attack_dir / "model.pt")

    print(f"training time {train_seconds:.1f} s, final test accuracy {accuracy(model, x_test, y_test):.4f}")
    print(f"wrote {weights} ({weights.stat().st_size} bytes) and copies into {', '.join(d.name for d in ATTACK_DIRS)}")
    if (DATASET_1K / "dataset.csv").exists():
        x_1k, y_1k = load_dataset_1k(DATASET_1K)
        name = DATASET_1K.relative_to(REPO_ROOT)
        print(f"accuracy on {name} ({len(x_1k)} images): {accuracy(model, x_1k, y_1k):.4f}")
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if str(REPO_ROOT) not in sys.path:  # `sandbox.fashion_mnist` without PYTHONPATH too
        sys.path.insert(0, str(REPO_ROOT))
    train(args.epochs, args.batch_size, args.learning_rate, args.seed, args.threads)


if __name__ == "__main__":
    main()
