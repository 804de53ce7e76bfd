"""What every ImageNet sample shares: timm's Inception models with weights from the mounted folder, the labels'
numbering, the command line, 299x299 PNG batches.

Each sample folder carries an identical copy of this file (a submission sees only its own folder, at /code);
tests/test_imagenet_samples.py fails when the copies differ: change one, then copy it over the others.

The models are the NIPS 2017 paper's released Inception checkpoints as timm publishes them. Their weights are not in
the folder: the sandbox mounts a weights folder read-only and names it in SANDBOX_WEIGHTS (`sandbox run --weights
DIR`; `sandbox weights fetch DIR` downloads it). `python3 imagenet_io.py random-weights DIR` writes randomly
initialised weights in the same format, for tests and speed measurements only.
"""

import csv
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIZE = 299
SOURCE_MODEL = "inception_v3.tf_in1k"  # the attacks' source model
MODELS = ("inception_v3.tf_in1k", "inception_v3.tf_adv_in1k", "inception_resnet_v2.tf_ens_adv_in1k")
# The data set's ImageNet numbering (SANDBOX_LABEL_CONVENTION) -> what to add to a 0..999 class index. Without the
# variable: TF-Slim's 1..1000 (0 = background), the NIPS 2017 competition's own.
LABEL_OFFSETS = {"tf-slim-1001": 1, "0-999": 0}
FETCH_HINT = "run `sandbox weights fetch DIR` where the hub is reachable, then `sandbox run --weights DIR`"

Attack = Callable[[torch.nn.Module, np.ndarray, int], np.ndarray]
TargetedAttack = Callable[[torch.nn.Module, np.ndarray, np.ndarray, int], np.ndarray]


def import_timm():
    """timm, importable beside a +cpu torch.

    PyPI's torchvision wheels are CUDA builds; torchvision 0.28.0's compiled ops cannot load beside torch
    2.13.0+cpu, and its import then fails registering a kernel for the op `torchvision::nms` that never got
    defined. timm needs only torchvision's pure-Python parts, so the two ops' schemas are defined first and the
    import is tried again. Where the compiled ops load (a CUDA torch) nothing is changed."""
    try:
        import timm
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        for name in [n for n in sys.modules if n.split(".")[0] in ("torchvision", "timm")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
        import_timm.library = library  # the definitions last as long as this object
        import timm
    return timm


def label_offset() -> int:
    convention = os.environ.get("SANDBOX_LABEL_CONVENTION", "tf-slim-1001")
    if convention not in LABEL_OFFSETS:
        sys.exit(f"SANDBOX_LABEL_CONVENTION '{convention}' is unknown; expected one of {', '.join(LABEL_OFFSETS)}")
    return LABEL_OFFSETS[convention]


def set_up_torch() -> None:
    """The piece's thread count (OMP_NUM_THREADS) and torch seeded with SANDBOX_SEED: a rerun draws the same."""
    try:
        torch.set_num_threads(max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1")))))
    except ValueError:
        pass
    torch.manual_seed(int(os.environ.get("SANDBOX_SEED", "0")))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def weights_path(model_id: str) -> Path:
    """The model's file in the mounted weights folder; a missing folder or file ends the piece with one line."""
    folder = os.environ.get("SANDBOX_WEIGHTS")
    if not folder:
        sys.exit(f"no weights folder for {model_id} (SANDBOX_WEIGHTS is not set): {FETCH_HINT}")
    path = Path(folder) / f"{model_id}.safetensors"
    try:
        if not path.is_file():
            sys.exit(f"{path} missing (weights of {model_id}): {FETCH_HINT}")
    except PermissionError:
        sys.exit(f"{path}: not readable (weights of {model_id}); make the weights folder readable: chmod -R a+rX DIR")
    return path


def load_model(model_id: str) -> torch.nn.Module:
    """timm's model with the weights file of the mounted folder, in eval mode on the GPU when there is one."""
    path = weights_path(model_id)  # before the slow import: a missing file is reported at once
    timm = import_timm()
    model = timm.create_model(model_id, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    return model.eval().to(device())


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pixels in 0..255 [N, H, W, 3] -> logits over timm's 1000 classes (0..999); the models read (x/255 - mean)/std,
    which for these TF-Slim models (mean = std = 0.5) is x/255*2-1."""
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg["mean"], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=x.device).view(1, 3, 1, 1)
    return model((x.permute(0, 3, 1, 2) / 255.0 - mean) / std)


def png_paths(input_dir: Path) -> list[Path]:
    return sorted(p for p in input_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file())


def batches(paths: list[Path], batch_size: int) -> Iterator[list[Path]]:
    for i in range(0, len(paths), batch_size):
        yield paths[i : i + batch_size]


def load_batch(paths: list[Path]) -> np.ndarray:
    """PNG files -> uint8 [N, 299, 299, 3]."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            if image.mode != "RGB" or image.size != (SIZE, SIZE):
                sys.exit(f"{path.name}: expected a {SIZE}x{SIZE} RGB image, got {image.size} {image.mode!r}")
            images.append(np.asarray(image))
    return np.stack(images)


def to_uint8_within(x: np.ndarray, x_adv: torch.Tensor, epsilon: int) -> np.ndarray:
    """Rounds to pixels and keeps every pixel within epsilon of the clean image and within 0..255."""
    adv = np.rint(x_adv.detach().cpu().numpy())
    return np.clip(adv, x.astype(np.int16) - epsilon, x.astype(np.int16) + epsilon).clip(0, 255).astype(np.uint8)


def run_attack(method: Attack, batch_size: int = 8) -> None:
    """`attack.py INPUT_DIR OUTPUT_DIR EPSILON`: method(model, x, epsilon) on every batch, against SOURCE_MODEL."""
    if len(sys.argv) != 4:
        sys.exit("usage: attack.py INPUT_DIR OUTPUT_DIR EPSILON")
    input_dir, output_dir, epsilon = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    set_up_torch()
    model = load_model(SOURCE_MODEL)
    for batch in batches(png_paths(input_dir), batch_size):
        for path, image in zip(batch, method(model, load_batch(batch), epsilon), strict=True):
            Image.fromarray(image).save(output_dir / path.name)


def load_targets(csv_path: Path, offset: int) -> dict[str, int]:
    """target_class.csv (`FILENAME,TARGET`, no header) -> {file name: timm class 0..999}: the data set's label
    minus its offset. A target outside 0..999 there (TF-Slim's background, 0) is left out, with a warning."""
    targets = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        for row in csv.reader(f):
            if len(row) >= 2:
                target = int(row[1]) - offset
                if 0 <= target < 1000:
                    targets[row[0].strip()] = target
                else:
                    print(f"{row[0].strip()}: target {row[1]} is no ImageNet class here, ignored", file=sys.stderr)
    return targets


def run_targeted_attack(method: TargetedAttack, batch_size: int = 8) -> None:
    """A targeted attack's entry point: method(model, x, y_target, epsilon), y_target in timm's 0..999; an image
    without a usable target is written unchanged, with a warning on stderr."""
    if len(sys.argv) != 4:
        sys.exit("usage: attack.py INPUT_DIR OUTPUT_DIR EPSILON")
    input_dir, output_dir, epsilon = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    set_up_torch()
    targets = load_targets(input_dir / "target_class.csv", label_offset())
    model = load_model(SOURCE_MODEL)
    paths = png_paths(input_dir)
    for missing in (p for p in paths if p.name not in targets):
        print(f"{missing.name}: no target class, left unchanged", file=sys.stderr)
    for batch in batches(paths, batch_size):
        x = load_batch(batch)
        has_target = np.array([p.name in targets for p in batch])
        x_adv = x.copy()
        if has_target.any():
            y_target = np.array([targets[p.name] for p in batch if p.name in targets], dtype=np.int64)
            x_adv[has_target] = method(model, x[has_target], y_target, epsilon)
        for path, image in zip(batch, x_adv, strict=True):
            Image.fromarray(image).save(output_dir / path.name)


def run_defense(model_id: str, batch_size: int = 16) -> None:
    """`defense.py INPUT_DIR OUTPUT_FILE`: one `name,label` line per image, labels in the data set's numbering."""
    if len(sys.argv) != 3:
        sys.exit("usage: defense.py INPUT_DIR OUTPUT_FILE")
    input_dir, output_file = Path(sys.argv[1]), Path(sys.argv[2])
    set_up_torch()
    offset = label_offset()
    model = load_model(model_id)
    with open(output_file, "w") as out, torch.no_grad():
        for batch in batches(png_paths(input_dir), batch_size):
            x = torch.from_numpy(load_batch(batch)).float().to(device())
            for path, label in zip(batch, logits(model, x).argmax(dim=1).tolist(), strict=True):
                out.write(f"{path.name},{label + offset}\n")


def write_random_weights(folder: Path, models: tuple[str, ...] = MODELS, seed: int = 0) -> None:
    """Randomly initialised weights (seeded) in the weights folder's format: for tests and timings, never scores."""
    timm = import_timm()
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for model_id in models:
        torch.manual_seed(seed)
        state = timm.create_model(model_id, pretrained=False).state_dict()
        path = folder / f"{model_id}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        path.chmod(0o644)  # read by the submissions' user


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "random-weights":
        sys.exit("usage: python3 imagenet_io.py random-weights DIR [MODEL_ID ...]")
    write_random_weights(Path(sys.argv[2]), tuple(sys.argv[3:]) or MODELS)
