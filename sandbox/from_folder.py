"""`sandbox dataset from-folder`: a data set folder from a folder of one's own images and a CSV of labels.

The labels CSV has a header with at least `file,TrueLabel` and optionally `TargetClass` (docs/datasets.md).
`file` is a path relative to the image folder; every listed image is decoded, turned upright (EXIF), converted
to the chosen mode, centre-cropped to the output's aspect ratio (or not) and resized with Lanczos, then written
as `images/IMAGEID.png`. Anything wrong (a bad row, a missing or unreadable image, two files with one ImageId)
refuses the whole build with one line naming the file: nothing is written then. The folder is built beside OUT
and renamed into place, so OUT is either absent or a complete data set.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from sandbox.dataset import _SAFE_ID, REQUIRED_COLUMNS, DataSet, load_dataset
from sandbox.errors import DataSetError, one_line
from sandbox.fetch import MAX_PIXELS
from sandbox.store import sync_filesystem, write_atomically

FILE_COLUMN = "file"
MODES = ("RGB", "L")
CROPS = ("center", "none")
DEFAULT_SEED = 2017
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SIZE = re.compile(r"^\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class FolderOptions:
    size: tuple[int, int] = (299, 299)  # (width, height) of every output image
    crop: str = "center"  # "center": crop to the output's aspect ratio first; "none": plain resize
    mode: str = "RGB"
    num_classes: int | None = None  # None: the largest label plus one
    seed: int = DEFAULT_SEED  # draws TargetClass when the CSV has no such column
    name: str | None = None
    label_convention: str | None = None  # for ImageNet labels: "tf-slim-1001" (1..1000) or "0-999"


@dataclass(frozen=True)
class LabelRow:
    line: int
    file: str  # as written in the CSV
    path: Path
    image_id: str
    true_label: int
    target_class: int | None


@dataclass
class FolderResult:
    out: Path
    dataset: DataSet
    targets_drawn: bool
    unlisted: list[str] = field(default_factory=list)  # files in DIR that the CSV does not name: left out


def parse_size(text: str) -> tuple[int, int]:
    """'299' is 299x299, '320x240' is width 320, height 240."""
    match = _SIZE.match(text)
    if not match or not 1 <= int(match.group(1)) <= 10000 or not 1 <= int(match.group(2) or match.group(1)) <= 10000:
        raise DataSetError("--size", f"'{text}' is not a size", "give N (square) or WxH, 1..10000 each")
    return int(match.group(1)), int(match.group(2) or match.group(1))


def image_id_for(file: str) -> str:
    """The ImageId of a listed file: its path without the extension, each run of other characters than
    letters, digits, `.`, `_`, `-` (the `/` of a subfolder included) made one `_`, starting with a letter or digit."""
    suffix = Path(file).suffix
    stem = file[: -len(suffix)] if suffix else file
    return _UNSAFE.sub("_", stem).lstrip("._-")[:128]


def _label(csv_path: Path, line: int, column: str, value: str | None) -> int:
    text = (value or "").strip()
    if not (text.isascii() and text.isdigit()):  # isdigit() alone takes '²', which int() refuses
        raise DataSetError(csv_path, f"line {line}: {column} '{text}' is not a label (an integer >= 0)", "fix the row")
    return int(text)


def read_labels(csv_path: Path, folder: Path) -> tuple[list[LabelRow], bool]:
    """The rows of the labels CSV, checked before any image is decoded; and whether it has TargetClass."""
    csv_path, folder = Path(csv_path), Path(folder)
    if not csv_path.is_file():
        raise DataSetError(csv_path, "no such file", "give a CSV with the header file,TrueLabel[,TargetClass]")
    root = folder.resolve()
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            missing = [c for c in (FILE_COLUMN, "TrueLabel") if c not in columns]
            if missing:
                raise DataSetError(
                    csv_path, f"header lacks {', '.join(missing)}", "the header is file,TrueLabel[,TargetClass]"
                )
            has_target = "TargetClass" in columns
            rows: list[LabelRow] = []
            by_id: dict[str, LabelRow] = {}
            for line, row in enumerate(reader, start=2):
                name = (row.get(FILE_COLUMN) or "").strip()
                if not name:
                    raise DataSetError(csv_path, f"line {line}: no file named", "fix the row")
                path = (root / name).resolve()
                if not path.is_relative_to(root):
                    raise DataSetError(csv_path, f"line {line}: '{name}' is outside {folder}", "list files in DIR")
                image_id = image_id_for(name)
                if not _SAFE_ID.match(image_id):
                    raise DataSetError(csv_path, f"line {line}: '{name}' gives no usable ImageId", "rename the file")
                if image_id in by_id:
                    first = by_id[image_id]
                    raise DataSetError(
                        csv_path,
                        f"line {line}: '{name}' and '{first.file}' (line {first.line}) both give ImageId '{image_id}'",
                        "rename one of them or list one only",
                    )
                true_label = _label(csv_path, line, "TrueLabel", row.get("TrueLabel"))
                target = _label(csv_path, line, "TargetClass", row.get("TargetClass")) if has_target else None
                if target is not None and target == true_label:
                    raise DataSetError(csv_path, f"line {line}: TargetClass equals TrueLabel {true_label}", "fix it")
                parsed = LabelRow(line, name, path, image_id, true_label, target)
                by_id[image_id] = parsed
                rows.append(parsed)
    except UnicodeDecodeError:
        raise DataSetError(csv_path, "not UTF-8 text", "save the CSV as UTF-8") from None
    except csv.Error as exc:
        raise DataSetError(csv_path, f"not a readable CSV ({one_line(exc, 200)})", "fix the file") from None
    if not rows:
        raise DataSetError(csv_path, "no images listed", "add rows")
    return rows, has_target


def _num_classes(csv_path: Path, rows: list[LabelRow], asked: int | None, draw: bool) -> int:
    labels = [r.true_label for r in rows] + [r.target_class for r in rows if r.target_class is not None]
    num_classes = asked if asked is not None else max(labels) + 1
    if max(labels) >= num_classes:
        raise DataSetError(csv_path, f"label {max(labels)} is not below --num-classes {num_classes}", "fix either")
    if draw and num_classes < 2:
        raise DataSetError(csv_path, "one class only: no TargetClass can differ from TrueLabel", "give --num-classes")
    return num_classes


def draw_targets(true_labels: list[int], num_classes: int, seed: int) -> list[int]:
    """One TargetClass per image, uniform over the classes other than its TrueLabel; the same seed, the same list."""
    rng = random.Random(seed)
    targets = []
    for label in true_labels:
        target = rng.randrange(num_classes - 1)
        targets.append(target + 1 if target >= label else target)
    return targets


def center_box(width: int, height: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest box of the output's aspect ratio in the middle of a width x height image."""
    out_w, out_h = size
    if width * out_h > height * out_w:  # too wide: keep the full height
        crop_w = max(1, round(height * out_w / out_h))
        left = (width - crop_w) // 2
        return left, 0, left + crop_w, height
    crop_h = max(1, round(width * out_h / out_w))
    top = (height - crop_h) // 2
    return 0, top, width, top + crop_h


def convert_image(path: Path, options: FolderOptions) -> bytes:
    """The PNG of one image: decoded in full, upright, in `options.mode` (alpha dropped), cropped and resized."""
    try:
        with Image.open(path) as probe:
            if probe.width * probe.height > MAX_PIXELS:
                raise DataSetError(path, f"{probe.width}x{probe.height} pixels is over the limit of {MAX_PIXELS}")
        with Image.open(path) as image:
            image.load()
            converted = ImageOps.exif_transpose(image).convert(options.mode)
    except DataSetError:
        raise
    except Exception as exc:  # Pillow raises many kinds for a file that is no (whole) image
        raise DataSetError(path, f"not a readable image ({one_line(exc, 200)})", "replace it or leave it out") from None
    if options.crop == "center":  # crop, then resize: the filter never reaches the pixels cropped away
        converted = converted.crop(center_box(*converted.size, options.size))
    resized = converted.resize(options.size, resample=Image.Resampling.LANCZOS)
    out = io.BytesIO()
    resized.save(out, format="PNG")
    return out.getvalue()


def _unlisted(folder: Path, rows: list[LabelRow], skip: set[Path]) -> list[str]:
    """Files in the image folder (subfolders included, hidden ones not) that the CSV does not name."""
    listed = {r.path for r in rows} | skip
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.resolve() not in listed:
            found.append(relative.as_posix())
    return found


def build_from_folder(
    folder: Path,
    labels: Path,
    out: Path,
    options: FolderOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FolderResult:
    """Builds the data set folder `out` from the images in `folder` listed in the CSV `labels`.

    Refuses (DataSetError, nothing written) an existing non-empty `out`, a bad CSV, a missing or unreadable
    image and two files with one ImageId. `progress(done, total)` is called once before and once per image.
    """
    options = options or FolderOptions()
    folder, labels, out = Path(folder), Path(labels), Path(out)
    if options.mode not in MODES:
        raise DataSetError("--mode", f"'{options.mode}' is not a mode", f"use one of {', '.join(MODES)}")
    if options.crop not in CROPS:
        raise DataSetError("--crop", f"'{options.crop}' is not a crop", f"use one of {', '.join(CROPS)}")
    if not folder.is_dir():
        raise DataSetError(folder, "no such folder", "give the folder that holds the images")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataSetError(out, "already exists and is not an empty folder", "choose a new OUT or delete it")
    rows, has_target = read_labels(labels, folder)
    num_classes = _num_classes(labels, rows, options.num_classes, not has_target)
    for row in rows:
        if not row.path.is_file():
            raise DataSetError(row.path, f"missing (listed on line {row.line} of {labels})", "fix the name or the row")
    given = [r.target_class for r in rows if r.target_class is not None]  # every row's, or none
    targets = given if has_target else draw_targets([r.true_label for r in rows], num_classes, options.seed)
    unlisted = _unlisted(folder.resolve(), rows, {labels.resolve(), out.resolve()})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        images = tmp / "images"
        images.mkdir(parents=True)
        if progress:
            progress(0, len(rows))
        for done, row in enumerate(rows, start=1):
            png = convert_image(row.path, options)
            try:
                write_atomically(images / f"{row.image_id}.png", png, durable=False)
            except OSError as exc:
                raise DataSetError(images, f"cannot write {row.image_id}.png ({one_line(exc, 200)})") from None
            if progress:
                progress(done, len(rows))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow((*REQUIRED_COLUMNS, FILE_COLUMN))
        writer.writerows((r.image_id, r.true_label, t, r.file) for r, t in zip(rows, targets, strict=True))
        write_atomically(tmp / "dataset.csv", text.getvalue().encode("utf-8"), durable=False)
        info = {
            "name": options.name or f"{folder.resolve().name}, {len(rows)} images",
            "num_classes": num_classes,
            "source": f"sandbox dataset from-folder {folder.resolve().name} --labels {labels.name}",
            "image_size": list(options.size),
            "mode": options.mode,
            "crop": options.crop,
            "target_class": "from the labels CSV" if has_target else f"drawn uniformly, seed {options.seed}",
            **({"label_convention": options.label_convention} if options.label_convention else {}),
        }
        write_atomically(tmp / "dataset.json", (json.dumps(info, indent=2) + "\n").encode("utf-8"), durable=False)
        sync_filesystem(tmp)
        try:
            os.rename(tmp, out)  # onto an empty folder too; one that filled meanwhile makes this fail, not vanish
        except OSError as exc:
            raise DataSetError(
                out, f"cannot create it ({one_line(exc, 200)})", "choose a new OUT or delete it"
            ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FolderResult(out, load_dataset(out), targets_drawn=not has_target, unlisted=unlisted)
