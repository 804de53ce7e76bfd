"""A generated competition as organizers receive it: ~30 light submissions of all three types in one folder,
some of them broken, some packed as archives, with a submissions.csv that names them.

Light means shell or a few lines of numpy in the sandbox's own images: a run of the whole corpus takes seconds per
piece, so the organizer benchmark and tests measure the sandbox, not the submissions. Used by
benchmarks/organizer_runs.py and tests/test_organizer.py.
"""

from __future__ import annotations

import csv
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.image_names import image_tag

BASE = image_tag("base")  # a shell and python3
NUMPY = image_tag("torch-cpu")  # numpy and Pillow too

COPY = '#!/bin/sh\ncp "$1"/*.png "$2"/\n'
CONSTANT = '#!/bin/sh\nfor f in "$1"/*.png; do echo "$(basename "$f"),{label}"; done > "$2"\n'
CRASH = "#!/bin/sh\necho 'cannot load weights.pt' >&2\nexit 3\n"
SLEEP = "#!/bin/sh\nsleep 600\n"  # killed at the time limit
PIXELS = """#!/usr/bin/env python3
import os, sys, pathlib
import numpy as np
from PIL import Image
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
seed = int(os.environ.get("SANDBOX_SEED", "0"))
for path in sorted(src.glob("*.png")):
    x = np.asarray(Image.open(path)).astype(int)
    rng = np.random.default_rng([seed, int(x.sum())])  # keyed by the image, not by its (opaque, per-run) name
    y = {expression}
    Image.fromarray(np.clip(y, 0, 255).astype(np.uint8)).save(dst / path.name)
"""
THRESHOLD = """#!/usr/bin/env python3
import sys, pathlib
import numpy as np
from PIL import Image
with open(sys.argv[2], "w") as out:
    for path in sorted(pathlib.Path(sys.argv[1]).glob("*.png")):
        x = np.asarray(Image.open(path)).astype(float)
        out.write(f"{{path.name}},{{int(x.mean() // {step}) % 10}}\\n")
"""


@dataclass
class Corpus:
    folder: Path
    admitted: dict[str, str] = field(default_factory=dict)  # id -> type
    refused: dict[str, str] = field(default_factory=dict)  # id -> a fragment of its one-line reason
    incomplete: set[str] = field(default_factory=set)  # admitted, but its pieces fail
    names: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (display name, team)


def _write(parent: Path, name: str, kind: str, script: str, image: str = BASE, **extra: object) -> Path:
    folder = parent / name
    folder.mkdir(parents=True)
    metadata = {"type": kind, "container": image, "entry_point": "run.sh", **extra}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    (folder / "run.sh").write_text(script)
    (folder / "run.sh").chmod(0o755)
    return folder


def _zip(folder: Path) -> Path:
    """Packs a submission folder as FOLDER.zip beside it (with the entry point's mode) and removes the folder."""
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix())
            info.external_attr = (0o100755 if path.name == "run.sh" else 0o100644) << 16
            zf.writestr(info, path.read_bytes())
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    return archive


def attacks(parent: Path, corpus: Corpus, names: list[str]) -> None:
    """Light attacks: copies, brightness shifts, seeded noise and an inversion (clipped to epsilon)."""
    recipes = {
        "noop": (COPY, BASE),
        "shift4": (PIXELS.format(expression="x + 4"), NUMPY),
        "shift8": (PIXELS.format(expression="x + 8"), NUMPY),
        "shift12": (PIXELS.format(expression="x + 12"), NUMPY),
        "shift16": (PIXELS.format(expression="x + 16"), NUMPY),
        "darken16": (PIXELS.format(expression="x - 16"), NUMPY),
        "noise8": (PIXELS.format(expression="x + 8 * rng.choice([-1, 1], size=x.shape)"), NUMPY),
        "noise16": (PIXELS.format(expression="x + 16 * rng.choice([-1, 1], size=x.shape)"), NUMPY),
        "invert": (PIXELS.format(expression="255 - x"), NUMPY),
        "stripes": (PIXELS.format(expression="x + 16 * ((np.arange(x.shape[-1]) % 2) * 2 - 1)"), NUMPY),
        "copy2": (COPY, BASE),
    }
    for name in names:
        script, image = recipes[name]
        _write(parent, name, "attack", script, image)
        corpus.admitted[name] = "attack"


def targeted_attacks(parent: Path, corpus: Corpus, names: list[str]) -> None:
    recipes = {"t_up": "x + 12", "t_down": "x - 12", "t_noise": "x + 16 * rng.choice([-1, 1], size=x.shape)"}
    for name in names:
        _write(parent, name, "targeted_attack", PIXELS.format(expression=recipes[name]), NUMPY)
        corpus.admitted[name] = "targeted_attack"


def defenses(parent: Path, corpus: Corpus, names: list[str]) -> None:
    """Constant labels and brightness thresholds: deterministic functions of the pixels they see."""
    for name in names:
        if name.startswith("const"):
            _write(parent, name, "defense", CONSTANT.format(label=int(name[-1])))
        else:
            _write(parent, name, "defense", THRESHOLD.format(step=int(name.removeprefix("mean"))), NUMPY)
        corpus.admitted[name] = "defense"


def broken(parent: Path, corpus: Corpus) -> None:
    """What organizers also receive: a wrong type, a missing entry point, an unsafe archive, a model for another
    image size, a defense that crashes and an attack that sleeps past its time limit."""
    bad = _write(parent, "bad_type", "attack", COPY)
    (bad / "metadata.json").write_text(json.dumps({"type": "attak", "container": BASE, "entry_point": "run.sh"}))
    corpus.refused["bad_type"] = "field 'type'"
    missing = _write(parent, "no_entry", "defense", CONSTANT.format(label=1))
    (missing / "run.sh").unlink()
    corpus.refused["no_entry"] = "is not a file in the submission"
    with zipfile.ZipFile(parent / "zip_slip.zip", "w") as zf:
        zf.writestr("metadata.json", json.dumps({"type": "attack", "container": BASE, "entry_point": "run.sh"}))
        zf.writestr("../../evil.sh", "#!/bin/sh\n")
    corpus.refused["zip_slip"] = "unsafe path '../../evil.sh'"
    _write(parent, "imagenet_model", "defense", CONSTANT.format(label=1), input_size=[299, 299])
    corpus.refused["imagenet_model"] = "input_size 299x299, but the data set's images are 28x28"
    _write(parent, "crashes", "defense", CRASH)
    corpus.admitted["crashes"] = "defense"
    corpus.incomplete.add("crashes")
    _write(parent, "sleeper", "attack", SLEEP)
    corpus.admitted["sleeper"] = "attack"
    corpus.incomplete.add("sleeper")


ATTACKS = [
    "noop",
    "shift4",
    "shift8",
    "shift12",
    "shift16",
    "darken16",
    "noise8",
    "noise16",
    "invert",
    "stripes",
    "copy2",
]
TARGETED = ["t_up", "t_down", "t_noise"]
DEFENSES = ["const0", "const3", "const7", "mean15", "mean20", "mean25", "mean30", "mean40", "mean50", "mean60"]
LATE = {"attack": ["copy2", "stripes"], "targeted_attack": [], "defense": ["mean60"]}  # held back for a second folder


def write_corpus(folder: Path, late: bool = False, archives: tuple[str, ...] = ("shift8", "mean25")) -> Corpus:
    """The corpus in `folder` (with `late`, only the three late submissions, for an incremental run)."""
    folder.mkdir(parents=True)
    corpus = Corpus(folder)
    held = {name for names in LATE.values() for name in names}
    pick = (
        (lambda names: [n for n in names if n in held]) if late else (lambda names: [n for n in names if n not in held])
    )
    attacks(folder, corpus, pick(ATTACKS))
    targeted_attacks(folder, corpus, pick(TARGETED))
    defenses(folder, corpus, pick(DEFENSES))
    if not late:
        broken(folder, corpus)
        for name in archives:
            _zip(folder / name)
        corpus.names = {"shift4": ("Shift <b>four</b> & co", 'Team "Zoë"'), "mean20": ("Mean/20", "Ünïcode")}
        with (folder / "submissions.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "name", "team"])
            writer.writerows([sub_id, name, team] for sub_id, (name, team) in corpus.names.items())
    return corpus
