"""`sandbox dataset from-folder`: one's own images (PNG, JPEG, grey, palette, several sizes) into a data set folder.

No Docker: generated images in a temporary folder, the library and the CLI (CliRunner).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from sandbox.cli import main
from sandbox.dataset import load_dataset
from sandbox.errors import DataSetError
from sandbox.from_folder import FolderOptions, build_from_folder, draw_targets, image_id_for, parse_size

RED, BLUE = (255, 0, 0), (0, 0, 255)


def striped(width: int, height: int) -> Image.Image:
    """Blue in the middle square, red bands on the long sides: a centre crop keeps only blue."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, :] = RED
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    pixels[top : top + side, left : left + side] = BLUE
    return Image.fromarray(pixels, "RGB")


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """Five images: a wide PNG, a tall JPEG, a grey PNG, a palette GIF and an RGBA PNG in a subfolder."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    striped(300, 200).save(folder / "wide.png")
    striped(120, 180).save(folder / "tall photo.jpg", quality=95)
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (40, 1)), "L").save(folder / "grey.png")
    striped(90, 60).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(folder / "palette.gif")
    Image.new("RGBA", (50, 50), (0, 255, 0, 128)).save(folder / "sub" / "alpha.png")
    (folder / "notes.txt").write_text("not listed\n")
    return folder


@pytest.fixture()
def labels(tmp_path: Path) -> Path:
    rows = ["wide.png,0", "tall photo.jpg,1", "grey.png,2", "palette.gif,3", "sub/alpha.png,4"]
    return write_csv(tmp_path / "labels.csv", "file,TrueLabel", rows)


def test_builds_a_dataset_of_one_size_and_mode(photos: Path, labels: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = build_from_folder(photos, labels, out, FolderOptions(size=(32, 32), mode="RGB", name="mine"))
    ds = load_dataset(out)
    assert ds.size == (32, 32) and ds.mode == "RGB" and ds.name == "mine" and ds.num_classes == 5
    assert [r.image_id for r in ds.records] == ["wide", "tall_photo", "grey", "palette", "sub_alpha"]
    assert [r.true_label for r in ds.records] == [0, 1, 2, 3, 4]
    for record in ds.records:
        with Image.open(ds.image_path(record.image_id)) as image:
            assert (image.format, image.size, image.mode) == ("PNG", (32, 32), "RGB")
    assert result.targets_drawn and result.unlisted == ["notes.txt"]
    info = json.loads((out / "dataset.json").read_text())
    assert info["num_classes"] == 5 and "seed 2017" in info["target_class"]
    assert (out / "dataset.csv").read_text().splitlines()[0] == "ImageId,TrueLabel,TargetClass,file"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "the temporary folder is left behind"


def test_grey_mode_and_non_square_size(photos: Path, labels: Path, tmp_path: Path) -> None:
    build_from_folder(photos, labels, tmp_path / "out", FolderOptions(size=parse_size("40x20"), mode="L"))
    ds = load_dataset(tmp_path / "out")
    assert (ds.size, ds.mode) == ((40, 20), "L")
    grey = ds.load_pixels("grey")
    assert grey.shape == (20, 40) and grey[:, 0].mean() < grey[:, -1].mean()  # the ramp survives, left to right


def test_center_crop_keeps_the_middle_and_none_keeps_everything(photos: Path, labels: Path, tmp_path: Path) -> None:
    build_from_folder(photos, labels, tmp_path / "crop", FolderOptions(size=(30, 30), crop="center"))
    build_from_folder(photos, labels, tmp_path / "plain", FolderOptions(size=(30, 30), crop="none"))
    cropped, plain = load_dataset(tmp_path / "crop"), load_dataset(tmp_path / "plain")
    for image_id in ("wide", "tall_photo"):
        middle = cropped.load_pixels(image_id).astype(int)  # JPEG shifts pure blue a little: compare loosely
        assert middle[..., 0].max() < 40 and middle[..., 2].min() > 200, f"{image_id}: red survived the crop"
        whole = plain.load_pixels(image_id).astype(int)
        edge = whole[:, 0] if image_id == "wide" else whole[0, :]
        assert edge[..., 0].min() > 200 and edge[..., 2].max() < 40, f"{image_id}: the plain resize lost the red"


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    folder = tmp_path / "phone"
    folder.mkdir()
    pixels = np.zeros((30, 60, 3), dtype=np.uint8)
    pixels[:, :30], pixels[:, 30:] = RED, BLUE  # stored left red, right blue; shown rotated: top red, bottom blue
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to show
    Image.fromarray(pixels, "RGB").save(folder / "phone.jpg", exif=exif, quality=95)
    csv = write_csv(tmp_path / "p.csv", "file,TrueLabel,TargetClass", ["phone.jpg,0,1"])
    ds = build_from_folder(folder, csv, tmp_path / "out", FolderOptions(size=(10, 20), crop="none")).dataset
    shown = ds.load_pixels("phone").astype(int)
    assert shown[0, :, 0].min() > 200 and shown[-1, :, 2].min() > 200, "the EXIF orientation was not applied"


def test_target_classes_are_seeded_and_never_the_true_label(photos: Path, labels: Path, tmp_path: Path) -> None:
    true_labels = [i % 7 for i in range(500)]
    first, again = draw_targets(true_labels, 7, seed=5), draw_targets(true_labels, 7, seed=5)
    assert first == again and first != draw_targets(true_labels, 7, seed=6)
    assert all(t != label and 0 <= t < 7 for t, label in zip(first, true_labels, strict=True))
    assert set(first) == set(range(7))
    build_from_folder(photos, labels, tmp_path / "a", FolderOptions(size=(8, 8), seed=11, num_classes=10))
    build_from_folder(photos, labels, tmp_path / "b", FolderOptions(size=(8, 8), seed=11, num_classes=10))
    a, b = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    assert a.records == b.records and a.num_classes == 10
    assert all(r.target_class != r.true_label for r in a.records)


def test_target_class_column_is_kept(photos: Path, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "t.csv", "file,TrueLabel,TargetClass,comment", ["wide.png,1,3,x", "grey.png,2,0,y"])
    result = build_from_folder(photos, csv, tmp_path / "out", FolderOptions(size=(8, 8)))
    assert [(r.true_label, r.target_class) for r in result.dataset.records] == [(1, 3), (2, 0)]
    assert not result.targets_drawn and result.dataset.num_classes == 4


def test_image_ids_are_sanitised() -> None:
    assert image_id_for("a b/c (1).JPG") == "a_b_c_1_"
    assert image_id_for("x.tar.png") == "x.tar"
    assert image_id_for(".hidden.png") == "hidden"


@pytest.mark.parametrize(
    ("header", "rows", "expected"),
    [
        ("name,TrueLabel", ["wide.png,0"], "header lacks file"),
        ("file,TrueLabel", ["wide.png,cat"], "line 2: TrueLabel 'cat' is not a label"),
        ("file,TrueLabel", ["wide.png,-1"], "TrueLabel '-1' is not a label"),
        ("file,TrueLabel", ["wide.png,\u00b2"], "TrueLabel '\u00b2' is not a label"),
        ("file,TrueLabel,TargetClass", ["wide.png,1,1"], "line 2: TargetClass equals TrueLabel"),
        ("file,TrueLabel", ["missing.png,1"], "missing (listed on line 2"),
        ("file,TrueLabel", ["../outside.png,1"], "is outside"),
        ("file,TrueLabel", [], "no images listed"),
        ("file,TrueLabel", ["wide.png,0", "wide.png,1"], "'wide.png' (line 2) both give ImageId 'wide'"),
        ("file,TrueLabel", ["wide.png,0"], "one class only"),
    ],
)
def test_bad_csv_is_refused(photos: Path, tmp_path: Path, header: str, rows: list[str], expected: str) -> None:
    (tmp_path / "outside.png").write_bytes((photos / "wide.png").read_bytes())
    csv = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(DataSetError) as caught:
        build_from_folder(photos, csv, tmp_path / "out")
    assert expected in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_labels_over_num_classes_are_refused(photos: Path, labels: Path, tmp_path: Path) -> None:
    with pytest.raises(DataSetError, match="label 4 is not below --num-classes 3"):
        build_from_folder(photos, labels, tmp_path / "out", FolderOptions(num_classes=3))


def test_unreadable_image_is_refused_and_nothing_written(photos: Path, labels: Path, tmp_path: Path) -> None:
    (photos / "grey.png").write_bytes(b"<html>not a picture</html>")
    with pytest.raises(DataSetError) as caught:
        build_from_folder(photos, labels, tmp_path / "out", FolderOptions(size=(8, 8)))
    assert caught.value.where == str(photos / "grey.png") and "not a readable image" in caught.value.problem
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "photos"]


def test_truncated_jpeg_is_refused(photos: Path, tmp_path: Path) -> None:
    data = (photos / "tall photo.jpg").read_bytes()
    (photos / "cut.jpg").write_bytes(data[: len(data) // 2])
    csv = write_csv(tmp_path / "c.csv", "file,TrueLabel", ["wide.png,0", "cut.jpg,1"])
    with pytest.raises(DataSetError, match="not a readable image"):
        build_from_folder(photos, csv, tmp_path / "out", FolderOptions(size=(8, 8)))


def test_existing_out(photos: Path, labels: Path, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DataSetError, match="already exists"):
        build_from_folder(photos, labels, tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "x"
    (tmp_path / "empty").mkdir()
    build_from_folder(photos, labels, tmp_path / "empty", FolderOptions(size=(8, 8)))
    assert len(load_dataset(tmp_path / "empty").records) == 5


def test_parse_size() -> None:
    assert parse_size("299") == (299, 299) and parse_size("64x32") == (64, 32)
    for bad in ("0", "0x5", "5x0", "x3", "12x", "-4", "big", "10001"):
        with pytest.raises(DataSetError):
            parse_size(bad)


def test_cli_builds_and_summarises(photos: Path, labels: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["dataset", "from-folder", str(photos), str(out), "--labels", str(labels), "--size", "16", "--mode", "L"]
    result = CliRunner().invoke(main, [*args, "--seed", "3", "--name", "cli set"])
    assert result.exit_code == 0, result.output
    assert "5 images, 16x16 L, 5 classes, TargetClass drawn with seed 3" in result.output
    assert "1 files in DIR not in the CSV, left out (first: notes.txt)" in result.output
    assert load_dataset(out).name == "cli set"
    check = CliRunner().invoke(main, ["dataset", "check", str(out)])
    assert check.exit_code == 0 and "5 images, 16x16 L" in check.output


def _one_error(result) -> str:
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_cli_errors_are_one_line(photos: Path, labels: Path, tmp_path: Path) -> None:
    def run(csv: Path, out: Path, *more: str):
        return CliRunner().invoke(main, ["dataset", "from-folder", str(photos), str(out), "--labels", str(csv), *more])

    bad_csv = write_csv(tmp_path / "bad.csv", "file,label", ["wide.png,0"])
    assert "header lacks TrueLabel" in _one_error(run(bad_csv, tmp_path / "o1"))
    twice = write_csv(tmp_path / "twice.csv", "file,TrueLabel", ["a b.png,0", "a_b.png,1"])
    (photos / "a b.png").write_bytes((photos / "wide.png").read_bytes())
    (photos / "a_b.png").write_bytes((photos / "wide.png").read_bytes())
    assert "'a_b.png' and 'a b.png' (line 2) both give ImageId 'a_b'" in _one_error(run(twice, tmp_path / "o2"))
    assert "size" in _one_error(run(labels, tmp_path / "o3", "--size", "3y4"))
    (tmp_path / "o4").mkdir()
    (tmp_path / "o4" / "keep").write_text("")
    assert "already exists" in _one_error(run(labels, tmp_path / "o4"))
    (photos / "palette.gif").write_bytes(b"GIF89a broken")
    line = _one_error(run(labels, tmp_path / "o5"))
    assert "palette.gif: not a readable image" in line
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o5").exists()
