"""Data sets (docs/contract.md): a folder with `dataset.csv`, `images/IMAGEID.png` and an optional `dataset.json`."""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sandbox.errors import DataSetError
from sandbox.fashion_mnist import CLASS_NAMES, load_split

REQUIRED_COLUMNS = ("ImageId", "TrueLabel", "TargetClass")
# ImageNet's two numberings: TF-Slim's 1..1000 with 0 = background (the NIPS 2017 data sets), and 0..999 (most
# current models, timm's included). dataset.json names its own; a piece gets it as SANDBOX_LABEL_CONVENTION.
LABEL_CONVENTIONS = {"tf-slim-1001": 1, "0-999": 0}  # convention -> the offset from a 0..999 model's class index
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
FASHION_MNIST_SEED = 2017


@dataclass(frozen=True)
class ImageRecord:
    """One row of dataset.csv: the image's id, its true label and the target class of targeted attacks."""

    image_id: str
    true_label: int
    target_class: int


@dataclass(frozen=True)
class DataSet:
    """A checked data set folder: its records in dataset.csv order, and the size and mode every image shares."""

    root: Path
    name: str
    num_classes: int
    records: tuple[ImageRecord, ...]
    size: tuple[int, int]  # (width, height), as PIL reports it
    mode: str  # "L" or "RGB"
    class_names: tuple[str, ...] = ()
    label_convention: str | None = None  # one of LABEL_CONVENTIONS, for ImageNet data sets

    def image_path(self, image_id: str) -> Path:
        return self.root / "images" / f"{image_id}.png"

    def load_pixels(self, image_id: str) -> np.ndarray:
        with Image.open(self.image_path(image_id)) as image:
            return np.asarray(image.convert(self.mode), dtype=np.uint8)

    def by_id(self) -> dict[str, ImageRecord]:
        return {record.image_id: record for record in self.records}


def _parse_int(csv_path: Path, line: int, column: str, value: str | None) -> int:
    if value is None:
        raise DataSetError(
            csv_path, f"line {line}: no {column}", "give every row all of " + ", ".join(REQUIRED_COLUMNS)
        )
    if not re.fullmatch(r"\s*[0-9]+\s*", value):  # not int(): it takes '²', '٣' and '1_0'
        raise DataSetError(csv_path, f"line {line}: {column} '{value}' is not an integer label")
    return int(value)


def _read_records(csv_path: Path) -> list[ImageRecord]:
    if not csv_path.is_file():
        raise DataSetError(csv_path, "missing", f"a data set needs dataset.csv with {', '.join(REQUIRED_COLUMNS)}")
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise DataSetError(csv_path, f"header lacks {', '.join(missing)}", "add the column(s)")
        records, seen = [], set()
        for line, row in enumerate(reader, start=2):
            image_id = row["ImageId"]
            if not _SAFE_ID.match(image_id or ""):
                raise DataSetError(csv_path, f"line {line}: ImageId '{image_id}' must be letters, digits, . _ -")
            if image_id in seen:
                raise DataSetError(csv_path, f"line {line}: ImageId '{image_id}' appears twice", "keep one row")
            seen.add(image_id)
            true_label = _parse_int(csv_path, line, "TrueLabel", row["TrueLabel"])
            target = _parse_int(csv_path, line, "TargetClass", row["TargetClass"])
            if target == true_label:
                raise DataSetError(
                    csv_path,
                    f"line {line}: TargetClass is the TrueLabel ({target}), so a targeted attack would score on "
                    "every image a defense gets right",
                    "choose another target class for that image",
                )
            records.append(ImageRecord(image_id, true_label, target))
    if not records:
        raise DataSetError(csv_path, "no images listed", "add rows")
    return records


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every whole PNG ends with


def _ends_whole(path: Path) -> bool:
    """Whether the file ends as a whole PNG does: a cheap check for every image of a large data set."""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - len(_PNG_END)))
        return f.read() == _PNG_END


def load_dataset(root: Path) -> DataSet:
    """Loads and checks a data set: every listed image exists, and all share one size and mode."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataSetError(root, "no such data set folder", "give a folder that holds dataset.csv")
    records = _read_records(root / "dataset.csv")
    info: dict = {}
    info_path = root / "dataset.json"
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataSetError(info_path, f"not valid JSON ({exc})", "fix or delete it") from None
        if not isinstance(info, dict):
            raise DataSetError(info_path, "not a JSON object", 'write {"name": ..., "num_classes": ...} or delete it')
    size = mode = None
    for record in records:
        path = root / "images" / f"{record.image_id}.png"
        if not path.is_file() or path.is_symlink():
            raise DataSetError(path, "missing", "every row of dataset.csv needs images/IMAGEID.png")
        try:
            with Image.open(path) as image:
                this_size, this_mode = image.size, image.mode
                if not _ends_whole(path):  # cut short (an interrupted copy?): decoding it tells for sure
                    image.load()
        except OSError as exc:
            raise DataSetError(path, f"not a readable PNG ({exc})", "rebuild the data set") from None
        if this_mode not in ("L", "RGB"):
            raise DataSetError(path, f"mode {this_mode}", "data set images must be L or RGB")
        if size is None:
            size, mode = this_size, this_mode
        elif (this_size, this_mode) != (size, mode):
            raise DataSetError(
                path, f"{this_size} {this_mode}, but the first image is {size} {mode}", "make them equal"
            )
    class_names = tuple(info.get("class_names", ()))
    labels = [r.true_label for r in records] + [r.target_class for r in records]
    declared = info.get("num_classes")
    if declared is not None and (not isinstance(declared, int) or isinstance(declared, bool) or declared < 1):
        raise DataSetError(info_path, f"num_classes {declared!r} is not a positive integer", "fix or remove it")
    num_classes = declared or len(class_names) or max(labels) + 1
    bad = [label for label in labels if not 0 <= label < num_classes]
    if bad:
        raise DataSetError(root / "dataset.csv", f"label {bad[0]} outside 0..{num_classes - 1}", "fix num_classes")
    assert size is not None and mode is not None
    name = str(info.get("name") or root.name)
    return DataSet(root, name, num_classes, tuple(records), size, mode, class_names, _label_convention(info_path, info))


def _label_convention(info_path: Path, info: dict) -> str | None:
    """dataset.json's `label_convention`; an older NIPS 2017 set that has only `label_offset: 1` is TF-Slim's."""
    convention = info.get("label_convention")
    if convention is None:
        return "tf-slim-1001" if info.get("label_offset") == 1 else None
    if convention not in LABEL_CONVENTIONS:
        raise DataSetError(
            info_path, f"label_convention '{convention}' is unknown", f"use one of {', '.join(LABEL_CONVENTIONS)}"
        )
    return str(convention)


def subset_dataset(source: Path, dest: Path, n: int) -> Path:
    """The first `n` images of the data set at `source`, as a data set folder of its own: small real runs
    (tests, benchmarks, dry runs) without touching the original."""
    with (source / "dataset.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    if n > len(rows) - 1:
        raise DataSetError(source / "dataset.csv", f"{len(rows) - 1} images, fewer than the {n} asked for")
    (dest / "images").mkdir(parents=True)
    with (dest / "dataset.csv").open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows[: n + 1])
    for row in rows[1 : n + 1]:
        shutil.copyfile(source / "images" / f"{row[0]}.png", dest / "images" / f"{row[0]}.png")
    if (source / "dataset.json").is_file():
        shutil.copyfile(source / "dataset.json", dest / "dataset.json")
    return dest


def build_fashion_mnist(
    out: Path, per_class: int = 100, seed: int = FASHION_MNIST_SEED, source: Path | None = None
) -> Path:
    """Builds the shipped data set from Debian's `dataset-fashion-mnist`: `per_class` test images per class.

    Test images only, so that models trained on the 60,000 training images never saw them.
    """
    images, labels = load_split("test") if source is None else load_split("test", source)
    out = Path(out)
    if out.exists():
        raise DataSetError(out, "already exists", "choose a new folder or delete it")
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label in range(len(CLASS_NAMES)):
        candidates = np.flatnonzero(labels == label)
        chosen.extend(int(i) for i in rng.choice(candidates, size=per_class, replace=False))
    chosen.sort()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    rows = []
    for index in chosen:
        true_label = int(labels[index])
        target = int((true_label + rng.integers(1, len(CLASS_NAMES))) % len(CLASS_NAMES))
        image_id = f"fmnist_test_{index:05d}"
        Image.fromarray(images[index], mode="L").save(tmp / "images" / f"{image_id}.png", optimize=False)
        rows.append((image_id, true_label, target))
    with (tmp / "dataset.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(REQUIRED_COLUMNS)
        writer.writerows(rows)
    info = {
        "name": f"Fashion-MNIST test, {per_class * len(CLASS_NAMES)} images",
        "num_classes": len(CLASS_NAMES),
        "class_names": list(CLASS_NAMES),
        "licence": "MIT",
        "source": "Debian package dataset-fashion-mnist (t10k split), Zalando Research",
        "selection": {"per_class": per_class, "seed": seed},
    }
    (tmp / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    tmp.rename(out)
    return out
