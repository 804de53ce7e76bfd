"""Parts that need no container: planning, safe reading, clipping, submissions, the data set build."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sandbox import Limits
from sandbox.bundled import default_dataset_dir
from sandbox.dataset import build_fashion_mnist, load_dataset, subset_dataset
from sandbox.errors import DataSetError, SandboxError, SubmissionError
from sandbox.fashion_mnist import DEBIAN_ROOT
from sandbox.outputs_read import clip_to_epsilon, collect_folder, decode_image, parse_result_csv, pixel_hash
from sandbox.plan import defense_piece_count, parse_epsilons, plan_attack_pieces, plan_defense_pieces
from sandbox.submission import load_submission, load_submissions
from tests.submissions import FIXED_LABEL_DEFENSE, NOOP_ATTACK, write_submission


def test_epsilon_round_robin_per_batch():
    pieces = plan_attack_pieces(["a"], ["t"], [f"i{n}" for n in range(10)], 3, parse_epsilons("4,8,12,16"), 0, 3)
    attack = [p for p in pieces if not p.targeted]
    assert [p.epsilon for p in attack] == [4, 8, 12, 16]
    assert [len(p.image_ids) for p in attack] == [3, 3, 3, 1]
    assert all(p.targeted for p in pieces if p.submission_id == "t")


def test_batches_sharing_an_epsilon_run_in_one_piece_up_to_the_piece_size():
    images = [f"i{n:02d}" for n in range(20)]
    pieces = plan_attack_pieces(["a"], [], images, 2, (4, 8), 0, piece_size=5)
    assert [(p.epsilon, p.batch_indexes) for p in pieces] == [
        (4, (0, 2)),
        (4, (4, 6)),
        (4, (8,)),
        (8, (1, 3)),
        (8, (5, 7)),
        (8, (9,)),
    ]
    assert pieces[0].image_ids == ("i00", "i01", "i04", "i05")
    covered = sorted(image for p in pieces for image in p.image_ids)
    assert covered == images


def test_time_limit_scales_with_images_but_never_below_the_minimum():
    limits = Limits(time_per_100_images=500.0, min_time=60.0)
    assert limits.time_limit(1000) == 5000.0 and limits.time_limit(100) == 500.0
    assert limits.time_limit(1) == 60.0 and limits.time_limit(0) == 60.0
    assert Limits(time_per_100_images=30.0, min_time=0.0).time_limit(10) == 3.0


def test_piece_seeds_are_stable_and_distinct():
    first = plan_attack_pieces(["a", "b"], [], ["x", "y"], 1, (16,), 7, 1)
    again = plan_attack_pieces(["a", "b"], [], ["x", "y"], 1, (16,), 7, 1)
    other_seed = plan_attack_pieces(["a", "b"], [], ["x", "y"], 1, (16,), 8, 1)
    assert [p.seed for p in first] == [p.seed for p in again]
    assert len({p.seed for p in first}) == 4
    assert [p.seed for p in first] != [p.seed for p in other_seed]


def test_defense_pieces_cover_each_distinct_image_once():
    hashes = ["c", "a", "b", "a", "d"]
    pieces = plan_defense_pieces(["d1"], hashes, workers=1, max_piece_images=3, run_seed=0)
    assert [p.image_hashes for p in pieces] == [("a", "b"), ("c", "d")]


@pytest.mark.parametrize(
    ("images", "defenses", "workers", "cap", "expected"),
    [
        (5500, 4, 1, 10_000, 1),  # one worker: each defense's start-up paid once
        (5500, 4, 2, 10_000, 1),  # four defenses already keep two workers busy
        (5500, 1, 2, 10_000, 2),  # one defense, two workers: two pieces
        (9000, 3, 8, 10_000, 3),  # eight workers, three defenses: three pieces each
        (25_000, 4, 2, 10_000, 3),  # the cap bounds a piece (time limit, work lost to a kill)
        (2, 1, 16, 10_000, 2),  # never an empty piece
        (0, 4, 2, 10_000, 0),
    ],
)
def test_defense_piece_count_is_as_few_as_keep_the_workers_busy(images, defenses, workers, cap, expected):
    assert defense_piece_count(images, defenses, workers, cap) == expected


def test_planned_defense_pieces_never_move_when_images_are_added():
    first = plan_defense_pieces(["d1", "d2"], ["a", "b", "c", "d"], workers=4, max_piece_images=100, run_seed=0)
    assert [p.image_hashes for p in first] == [("a", "b"), ("c", "d"), ("a", "b"), ("c", "d")]
    planned = {"d1": {"a", "b", "c", "d"}, "d2": {"a", "b", "c", "d"}}
    # A resume with another --jobs plans nothing new; a new attack's images get pieces of their own.
    assert plan_defense_pieces(["d1", "d2"], ["a", "b", "c", "d"], 1, 100, 0, planned) == []
    added = plan_defense_pieces(["d1", "d2"], ["a", "b", "c", "d", "e"], 1, 100, 0, planned)
    assert [(p.submission_id, p.image_hashes) for p in added] == [("d1", ("e",)), ("d2", ("e",))]


@pytest.mark.parametrize("bad", ["", "x", "4,300", "-1"])
def test_bad_epsilon_is_refused(bad):
    with pytest.raises(SandboxError, match="epsilon"):
        parse_epsilons(bad)


def test_result_csv_tolerates_bom_crlf_spaces_and_rejects_the_rest():
    names = {"a.png", "b.png", "c.png", "d.png", "e.png", "f.png"}
    data = (
        "\ufeffa.png,1\r\n b.png , 2 \r\nc.png,3.0\nd.png,nan\n/input_images/e.png,4\nunknown.png,5\n"
        "a.png,9\nE.PNG,1\n\nf.png,-1\n"
    ).encode()
    labels, bad = parse_result_csv(data, names)
    assert labels == {"a.png": 1, "b.png": 2, "f.png": -1}
    assert bad == 5  # 3.0, nan, a path, an unknown name, a wrongly cased name


def test_clip_to_epsilon_counts_moved_pixels():
    clean = np.array([[0, 10, 250, 128]], dtype=np.uint8)
    adversarial = np.array([[255, 0, 255, 130]], dtype=np.uint8)
    clipped, moved = clip_to_epsilon(adversarial, clean, 16)
    assert clipped.tolist() == [[16, 0, 255, 130]]
    assert moved == 1


def test_decode_image_refuses_wrong_size_and_non_png(tmp_path):
    good = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(good, format="PNG")
    big = io.BytesIO()
    Image.fromarray(np.zeros((29, 28), dtype=np.uint8)).save(big, format="PNG")
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(jpeg, format="JPEG")
    assert decode_image(good.getvalue(), (28, 28), "L").shape == (28, 28)
    assert decode_image(big.getvalue(), (28, 28), "L") is None
    assert decode_image(jpeg.getvalue(), (28, 28), "L") is None
    assert decode_image(b"\x89PNG garbage", (28, 28), "L") is None


def test_rgb_output_is_converted_to_the_data_set_mode():
    rgb = io.BytesIO()
    Image.fromarray(np.full((28, 28, 3), 200, dtype=np.uint8)).save(rgb, format="PNG")
    assert decode_image(rgb.getvalue(), (28, 28), "L").dtype == np.uint8


def test_pixel_hash_depends_on_pixels_only():
    a = np.zeros((2, 2), dtype=np.uint8)
    assert pixel_hash(a) == pixel_hash(a.copy())
    assert pixel_hash(a) != pixel_hash(a + 1)


def test_collect_folder_never_follows_links(tmp_path):
    (tmp_path / "real.png").write_bytes(b"data")
    (tmp_path / "link.png").symlink_to("/etc/passwd")
    (tmp_path / "sub").mkdir()
    files, skipped = collect_folder(tmp_path)
    assert files == {"real.png": b"data"}
    assert sorted(skipped) == ["link.png", "sub"]


def test_bad_metadata_gives_one_line_naming_file_and_field(tmp_path):
    folder = write_submission(tmp_path, "bad", "attack", NOOP_ATTACK)
    (folder / "metadata.json").write_text(json.dumps({"type": "atack", "container": "x", "entry_point": "run.sh"}))
    with pytest.raises(SubmissionError) as info:
        load_submission(folder)
    message = str(info.value)
    assert "\n" not in message and "metadata.json" in message and "'type'" in message


def test_unknown_fields_are_warnings_and_entry_point_must_be_executable(tmp_path):
    folder = write_submission(tmp_path, "ok", "attack", NOOP_ATTACK, team="x")
    assert any("unknown field 'team'" in w for w in load_submission(folder).warnings)
    (folder / "run.sh").chmod(0o644)
    with pytest.raises(SubmissionError, match="chmod \\+x"):
        load_submission(folder)


def test_duplicate_ids_and_wrong_types_are_left_out(tmp_path):
    attacks = tmp_path / "attacks"
    write_submission(attacks, "same", "attack", NOOP_ATTACK)
    with zipfile.ZipFile(attacks / "same.zip", "w") as zf:
        zf.writestr("metadata.json", "{}")
    write_submission(attacks, "wrongtype", "defense", NOOP_ATTACK)
    result = load_submissions([attacks], "attack", tmp_path / "unpacked")
    assert [s.id for s in result.submissions] == ["same"]
    reasons = {lo.id: lo.error for lo in result.left_out}
    assert "already loaded" in reasons["same"] and "move it" in reasons["wrongtype"]


def test_archives_with_unsafe_paths_or_links_are_refused(tmp_path):
    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(slip, "w") as zf:
        zf.writestr("../evil.sh", "x")
    linked = tmp_path / "linked.tar.gz"
    with tarfile.open(linked, "w:gz") as tf:
        info = tarfile.TarInfo("metadata.json")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    for archive, expected in ((slip, "unsafe path"), (linked, "is a link; ship regular files only")):
        with pytest.raises(SubmissionError, match=expected):
            load_submission(archive, tmp_path / "unpacked")
    assert not (tmp_path / "evil.sh").exists()


def test_zip_submission_unpacks_with_its_executable_bit(tmp_path):
    source = write_submission(tmp_path / "src", "zipped", "attack", NOOP_ATTACK)
    archive = tmp_path / "zipped.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in source.iterdir():
            info = zipfile.ZipInfo(f"zipped/{path.name}")
            info.external_attr = (0o100755 if path.name == "run.sh" else 0o100644) << 16
            zf.writestr(info, path.read_bytes())
    submission = load_submission(archive, tmp_path / "unpacked")
    assert submission.id == "zipped" and submission.root.name == "zipped"


def test_shipped_dataset_loads_and_is_balanced():
    ds = load_dataset(default_dataset_dir())
    assert len(ds.records) == 1000 and ds.size == (28, 28) and ds.mode == "L" and ds.num_classes == 10
    counts = np.bincount([r.true_label for r in ds.records], minlength=10)
    assert counts.tolist() == [100] * 10
    assert all(r.target_class != r.true_label for r in ds.records)


def test_subset_dataset_keeps_the_first_images_and_refuses_too_many(tmp_path):
    shipped = load_dataset(default_dataset_dir())
    subset = load_dataset(subset_dataset(default_dataset_dir(), tmp_path / "three", 3))
    assert subset.records == shipped.records[:3] and subset.name == shipped.name
    with pytest.raises(DataSetError, match=r"dataset\.csv: 1000 images, fewer than the 1001 asked for"):
        subset_dataset(default_dataset_dir(), tmp_path / "too_many", 1001)


def test_dataset_errors_name_the_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "dataset.csv").write_text("ImageId,TrueLabel,TargetClass\nabc,1,2\n")
    with pytest.raises(DataSetError, match="abc.png: missing"):
        load_dataset(tmp_path)


@pytest.mark.skipif(
    not DEBIAN_ROOT.exists() and os.environ.get("CI") != "true", reason="needs Debian's dataset-fashion-mnist package"
)
def test_shipped_dataset_rebuilds_identically(tmp_path: Path):
    rebuilt = build_fashion_mnist(tmp_path / "rebuilt")
    shipped = default_dataset_dir()
    assert (rebuilt / "dataset.csv").read_bytes() == (shipped / "dataset.csv").read_bytes()
    assert json.loads((rebuilt / "dataset.json").read_text()) == json.loads((shipped / "dataset.json").read_text())
    ds = load_dataset(shipped)
    for record in ds.records:
        ours = np.asarray(Image.open(rebuilt / "images" / f"{record.image_id}.png"))
        assert np.array_equal(ours, ds.load_pixels(record.image_id)), record.image_id


def test_skipped_output_files_are_counted_even_when_their_names_are_cut():
    from sandbox.reporting import failures_by_submission
    from tests.stores import piece_record

    names = ",".join(f"link{i:04d}.png" for i in range(500))[:2000]  # what the store keeps of 500 names
    new = piece_record("attack/a/0", "attack", "a", 500, skipped_files=names, skipped_count=500)
    old = piece_record("attack/b/0", "attack", "b", 3, skipped_files="x.png,y.png,z.png")  # a store from before
    summary = failures_by_submission([new, old])
    assert summary["a"].skipped_output_files == 500
    assert summary["b"].skipped_output_files == 3


def test_zip_entries_with_permissions_but_no_file_type_are_regular_files(tmp_path):
    import json
    import stat
    import zipfile

    from sandbox.archives import archive_problems

    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:  # writestr stores 0o600 and no file type, as many zippers do
        zf.writestr("metadata.json", json.dumps({"type": "attack", "container": "x", "entry_point": "run.sh"}))
        info = zipfile.ZipInfo("run.sh")
        info.external_attr = 0o755 << 16
        zf.writestr(info, "#!/bin/sh\n")
    assert archive_problems(plain) == []
    assert load_submission(plain, tmp_path / "unpacked").metadata.entry_point == "run.sh"
    fifo = tmp_path / "fifo.zip"
    with zipfile.ZipFile(fifo, "w") as zf:
        info = zipfile.ZipInfo("pipe")
        info.external_attr = (stat.S_IFIFO | 0o644) << 16
        zf.writestr(info, "")
    assert [problem.problem for problem in archive_problems(fifo)] == ["'pipe' is a special file"]


def test_a_submission_for_another_image_size_is_refused_before_it_runs(tmp_path):
    from sandbox.submission import size_problem
    from sandbox.validate import validate_submission

    folder = write_submission(tmp_path, "imagenet", "defense", FIXED_LABEL_DEFENSE, input_size=[299, 299])
    report = validate_submission(folder)  # the shipped data set is 28x28: refused before any container starts
    assert [f.problem for f in report.errors] == ["input_size 299x299, but the data set's images are 28x28"]
    assert size_problem(load_submission(folder), (299, 299)) is None


def test_equal_scores_share_a_place():
    from sandbox.scoring import places, ranking

    ranked = ranking({"b": 5, "a": 5, "c": 3, "d": 3, "e": 1})
    assert [name for name, _ in ranked] == ["a", "b", "c", "d", "e"]  # the listing stays stable (by id)
    assert places(ranked) == [1, 1, 3, 3, 5]
    assert places([]) == []


def _zip(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def _bad_crc(path: Path) -> Path:
    _zip(path, [("metadata.json", b'{"type": "attack"}' * 50)])
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF  # inside the stored member's data: its CRC no longer matches
    path.write_bytes(bytes(data))
    return path


def _tar(path: Path, names: list[str]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name in names:
            tf.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    return path


META = json.dumps({"type": "attack", "container": "x", "entry_point": "run.sh"}).encode()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: _zip(p / "s.zip", [("a", b"x"), ("a/b", b"y")]), "cannot be read"),
        (lambda p: _bad_crc(p / "s.zip"), "cannot be read (BadZipFile"),
        (lambda p: _tar(p / "s.tar.gz", ["a", "a/b"]), "cannot be read"),
        (lambda p: _zip(p / "s.zip", [("metadata.json", b'{"type": ' + b"9" * 5000 + b"}")]), "metadata.json"),
        (lambda p: _zip(p / "s.zip", [("metadata.json", META.replace(b"run.sh", b"r" * 300))]), "s.zip"),
    ],
    ids=["file-then-folder-zip", "bad-crc", "file-then-folder-tar", "5000-digit-number", "long-entry-point"],
)
def test_an_archive_a_library_cannot_read_is_refused_in_one_line_not_a_traceback(tmp_path, make, expected):
    """One crafted upload must not stop an organizer's whole run (or every resume) with a traceback."""
    from sandbox.submission import admit

    archive = make(tmp_path)
    admission = admit(archive, tmp_path / "unpacked")
    assert admission.submission is None and admission.errors, admission
    line = admission.errors[0].line()
    assert expected in line and "\n" not in line, line


def test_validate_dot_names_the_folder_and_package_takes_a_dot_slash_entry_point(tmp_path, monkeypatch):
    from sandbox.package import package_submission
    from sandbox.submission import submission_id

    folder = write_submission(tmp_path, "my_attack", "attack", NOOP_ATTACK, entry="./run.sh")
    monkeypatch.chdir(folder)
    assert submission_id(Path(".")) == "my_attack"  # `sandbox validate .` from inside the folder
    result = package_submission(folder, tmp_path / "my_attack.zip")
    assert "run.sh" in result.files  # a run accepts `./run.sh`: packaging must too
    assert load_submission(tmp_path / "my_attack.zip", tmp_path / "unpacked").id == "my_attack"


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_a_tar_header_that_would_take_megabytes_of_memory_is_refused_before_tarfile_reads_it(tmp_path, tar_format):
    """tarfile reads a long-name (GNU) or extended (PAX) header whole: a few hundred KB of .tgz, hundreds of MB."""
    from sandbox.archives import archive_problems

    archive = tmp_path / "s.tar.gz"
    with tarfile.open(archive, "w:gz", format=tar_format) as tf:
        tf.addfile(tarfile.TarInfo("a" * 2_000_000), io.BytesIO(b""))
    (problem,) = archive_problems(archive)
    assert "a name or PAX header of" in problem.problem and problem.where == str(archive)


def test_an_ordinary_tgz_passes_the_header_scan_and_unpacks(tmp_path):
    source = write_submission(tmp_path / "src", "tarred", "attack", NOOP_ATTACK)
    archive = tmp_path / "tarred.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(source, arcname="tarred")
    assert load_submission(archive, tmp_path / "unpacked").id == "tarred"


def test_no_chosen_id_can_take_another_submissions_report_anchor():
    from sandbox.reporting import submission_anchor

    odd = submission_anchor("attack", "my attack")
    assert odd.startswith("attack-my-attack~")
    copycat = odd.removeprefix("attack-")  # the same text, chosen as a plain id by someone else
    assert submission_anchor("attack", copycat) != odd
    assert submission_anchor("attack", "plain_id-1.0") == "attack-plain_id-1.0"
