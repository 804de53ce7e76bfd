"""`sandbox new`: a ready submission folder that passes `sandbox validate` as it is.

Each template is a small working example in the chosen framework, meant to be replaced by the participant's own
model or attack while keeping the folder contract.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.image_names import image_tag

IMAGES = {"torch": image_tag("torch-cpu"), "tensorflow": image_tag("tensorflow-cpu")}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

ENTRY = """#!/bin/sh
# The sandbox runs: {usage}
# /code is read-only: keep Python from writing __pycache__ next to the code.
export PYTHONDONTWRITEBYTECODE=1 TF_CPP_MIN_LOG_LEVEL=2
exec python3 {script} "$@"
"""

HEAD = """import os
import sys
from pathlib import Path

import numpy as np
"""

COMMON = '''def images(folder: Path) -> list[Path]:
    """The input PNGs, sorted: their names are opaque, never rely on them."""
    return sorted(p for p in folder.iterdir() if p.suffix == ".png")


def load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def seed() -> int:
    """The sandbox gives every piece SANDBOX_SEED: seed from it and reruns give the same images."""
    return int(os.environ.get("SANDBOX_SEED", "0"))
'''

ATTACK = {
    "torch": '''"""{name}: a random-sign attack in torch.

Replace `perturb` with your attack; keep the folder contract.
"""

{head}import torch
from PIL import Image


{common}

def perturb(x: np.ndarray, epsilon: int, generator: torch.Generator, target: int | None = None) -> np.ndarray:
    """uint8 image -> uint8 image within epsilon of it (the sandbox clips anything beyond)."""
    noise = torch.randn(x.shape, generator=generator).sign()
    return (torch.from_numpy(x.astype(np.int16)) + epsilon * noise).clamp(0, 255).to(torch.uint8).numpy()


def main(input_dir: Path, output_dir: Path, epsilon: int) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    generator = torch.Generator().manual_seed(seed())
{attack_loop}''',
    "tensorflow": '''"""{name}: a random-sign attack in TensorFlow.

Replace `perturb` with your attack; keep the folder contract.
"""

{head}import tensorflow as tf
from PIL import Image


{common}

def perturb(x: np.ndarray, epsilon: int, generator: tf.random.Generator, target: int | None = None) -> np.ndarray:
    """uint8 image -> uint8 image within epsilon of it (the sandbox clips anything beyond)."""
    noise = tf.sign(generator.normal(x.shape))
    x_adv = tf.clip_by_value(tf.cast(x, tf.float32) + epsilon * noise, 0, 255)
    return tf.cast(x_adv, tf.uint8).numpy()


def main(input_dir: Path, output_dir: Path, epsilon: int) -> None:
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    generator = tf.random.Generator.from_seed(seed())
{attack_loop}''',
}

# The end of every attack template: the per-image loop and the entry point (`{targets}` is filled in per kind).
ATTACK_LOOP = """    targets = read_targets(input_dir)
    for path in images(input_dir):
        x_adv = perturb(load(path), epsilon, generator, targets.get(path.name))
        Image.fromarray(x_adv).save(output_dir / path.name)  # same name, same size, PNG


{targets}

if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
"""

READ_TARGETS = {
    "attack": '''def read_targets(input_dir: Path) -> dict[str, int]:
    """Non-targeted: there is no target_class.csv."""
    return {}''',
    "targeted_attack": '''def read_targets(input_dir: Path) -> dict[str, int]:
    """target_class.csv: `FILENAME,TARGET` per line, no header. Push each image toward its target."""
    lines = (input_dir / "target_class.csv").read_text().splitlines()
    return {name: int(target) for name, target in (line.split(",") for line in lines if line.strip())}''',
}

DEFENSE = {
    "torch": '''"""{name}: a defense in torch. Replace the model with yours (weights ship in this folder)."""

{head}import torch
from PIL import Image


{common}
NUM_CLASSES = 10  # the shipped Fashion-MNIST data set; NIPS 2017 ImageNet uses 1001


def classify(batch: np.ndarray, model: torch.nn.Module) -> list[int]:
    x = torch.from_numpy(batch.astype(np.float32) / 255.0).flatten(1)
    with torch.no_grad():
        return model(x).argmax(dim=1).tolist()


def main(input_dir: Path, output_file: Path, batch_size: int = 100) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    paths = images(input_dir)
    model = torch.nn.Linear(load(paths[0]).size, NUM_CLASSES)  # an untrained stand-in: load your weights here
    with output_file.open("w") as out:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            for path, label in zip(chunk, classify(np.stack([load(p) for p in chunk]), model)):
                out.write(f"{{path.name}},{{label}}\\n")  # FILENAME,LABEL with an integer label


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
''',
    "tensorflow": '''"""{name}: a defense in TensorFlow/Keras. Replace the model with yours (ship the weights here)."""

{head}import tensorflow as tf
from PIL import Image


{common}
NUM_CLASSES = 10  # the shipped Fashion-MNIST data set; NIPS 2017 ImageNet uses 1001


def main(input_dir: Path, output_file: Path, batch_size: int = 100) -> None:
    tf.config.threading.set_intra_op_parallelism_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    tf.keras.utils.set_random_seed(0)
    paths = images(input_dir)
    size = load(paths[0]).size
    model = tf.keras.Sequential([tf.keras.Input((size,)), tf.keras.layers.Dense(NUM_CLASSES)])  # load yours here
    with output_file.open("w") as out:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            x = np.stack([load(p) for p in chunk]).reshape(len(chunk), -1).astype(np.float32) / 255.0
            for path, label in zip(chunk, np.argmax(model(x).numpy(), axis=1)):
                out.write(f"{{path.name}},{{int(label)}}\\n")  # FILENAME,LABEL with an integer label


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
''',
}

README = """# {name}

A {kind} for adversarial-sandbox ({framework}), made by `sandbox new`. It runs in `{image}`.

    {usage}

Check it exactly as the organizers' run will, then package it:

    sandbox validate {name}
    sandbox package {name}        # writes {name}.zip

Rules of the folder contract: read inputs from the first argument, never rely on file names (they are opaque),
write {output}; seed randomness from `SANDBOX_SEED`; the folder is read-only at run time and there is no
network, so ship your weights in this folder.
"""


def new_submission(kind: str, name: str, parent: Path = Path("."), framework: str = "torch") -> Path:
    """Writes PARENT/NAME with metadata.json, the entry point, a working example and a README."""
    if kind not in ("attack", "targeted_attack", "defense"):
        raise SandboxError(f"type '{kind}'", "unknown", "choose attack, targeted_attack or defense")
    if framework not in IMAGES:
        raise SandboxError(f"framework '{framework}'", "unknown", "choose torch or tensorflow")
    if not _NAME.match(name):
        raise SandboxError(
            f"'{name}'", "not a submission name", "use letters, digits, '.', '_' and '-' (it becomes its id)"
        )
    folder = Path(parent) / name
    if folder.exists():
        raise SandboxError(folder, "already exists", "choose another name or remove it")
    defense = kind == "defense"
    script = "defense.py" if defense else "attack.py"
    entry = "run_defense.sh" if defense else "run_attack.sh"
    usage = f"./{entry} INPUT_DIR " + ("OUTPUT_FILE" if defense else "OUTPUT_DIR EPSILON")
    if defense:
        code = DEFENSE[framework].format(name=name, head=HEAD, common=COMMON)
    else:
        loop = ATTACK_LOOP.format(targets=READ_TARGETS[kind])
        code = ATTACK[framework].format(name=name, head=HEAD, common=COMMON, attack_loop=loop)
    metadata = {
        "type": kind,
        "container": IMAGES[framework],
        "entry_point": entry,
        "name": name,
        "description": f"A {kind.replace('_', ' ')} made with `sandbox new`.",
        "authors": "",
    }
    if not defense:
        metadata["source_model"] = "none"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (folder / entry).write_text(ENTRY.format(usage=usage, script=script))
    (folder / entry).chmod(0o755)
    (folder / script).write_text(code)
    output = "one `FILENAME,LABEL` line per image into OUTPUT_FILE" if defense else "one PNG per input, same name"
    readme = README.format(
        name=name,
        kind=kind.replace("_", " "),
        framework=framework,
        image=IMAGES[framework],
        usage=usage,
        output=output,
    )
    (folder / "README.md").write_text(readme)
    for path in [folder, *folder.iterdir()]:
        path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
    return folder
