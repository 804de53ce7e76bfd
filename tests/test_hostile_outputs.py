"""What a hostile submission can write into its output folder, built for real and read back without Docker."""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import time
import tracemalloc
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sandbox import outputs_read
from sandbox.errors import HostFault
from sandbox.outputs_read import (
    MAX_OUTPUT_FILE_BYTES,
    MAX_OUTPUT_FILES,
    MAX_RESULT_CSV_BYTES,
    collect_folder,
    collect_tar_stream,
    decode_image,
    parse_result_csv,
)

MiB = 1024**2
SIZE = (28, 28)


# --- building real hostile inputs ---------------------------------------------------------------------------------


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, linkname
    return info


def _tar_bytes(members: Iterable[tuple[tarfile.TarInfo, bytes]], tar_format: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format, encoding="utf-8", errors="surrogateescape") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def _chunks(data: bytes, size: int = 7919) -> Iterator[bytes]:
    """Odd-sized chunks, as Docker's HTTP stream cuts an archive anywhere."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _lazy_tar(infos: Iterable[tarfile.TarInfo]) -> Iterator[bytes]:
    """A tar stream of empty or zero-filled members, generated as it is read (for archives too big to hold)."""
    for info in infos:
        yield info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
        remaining = info.size + (-info.size % tarfile.BLOCKSIZE) if info.isreg() else 0
        while remaining:
            step = min(remaining, 4 * MiB)
            yield bytes(step)
            remaining -= step
    yield bytes(2 * tarfile.BLOCKSIZE)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(
    width: int, height: int, depth: int, color: int, rows: bytes, before_idat: bytes = b"", after_idat: bytes = b""
) -> bytes:
    """A PNG assembled chunk by chunk, so its header and chunks can claim anything."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
    idat = _chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + header + before_idat + idat + after_idat + _chunk(b"IEND", b"")


def _grey_rows(value: int = 0) -> bytes:
    return b"".join(b"\x00" + bytes([value]) * SIZE[0] for _ in range(SIZE[1]))


def _pillow_png(pixels: np.ndarray, **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **save_args)
    return buffer.getvalue()


def _bomb(size: int = 200 * MiB) -> bytes:
    return zlib.compress(bytes(size), 9)


def _peak_mib(call) -> tuple[object, float]:
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1] / MiB
    finally:
        tracemalloc.stop()


# --- result.csv ---------------------------------------------------------------------------------------------------


def test_result_csv_backtracking_bait_parses_in_linear_time():
    line = " " * 2000 + "x" + " " * 2000 + "y\n"
    bait = (line * (MAX_RESULT_CSV_BYTES // len(line) + 1)).encode()
    started = time.monotonic()
    labels, bad = parse_result_csv(bait, {"x"})
    assert time.monotonic() - started < 10  # the regex this replaced took 20 s for one such line
    assert labels == {} and bad == MAX_RESULT_CSV_BYTES // len(line)  # the line cut at the cap is blanks only


@pytest.mark.parametrize(
    "bait",
    [
        b" " * MAX_RESULT_CSV_BYTES,
        b"\n" * MAX_RESULT_CSV_BYTES,
        b"\r" * MAX_RESULT_CSV_BYTES,
        b"," * MAX_RESULT_CSV_BYTES,
        b"a.png," + b" " * (MAX_RESULT_CSV_BYTES - 8) + b"1x",
        b"9" * MAX_RESULT_CSV_BYTES,
    ],
    ids=["spaces", "newlines", "carriage-returns", "commas", "one-long-line", "digits"],
)
def test_result_csv_of_16_mib_of_pathological_text_finishes_in_bounded_time_and_memory(bait):
    started = time.monotonic()
    (labels, bad), peak = _peak_mib(lambda: parse_result_csv(bait, {"a.png"}))
    assert time.monotonic() - started < 10
    assert peak < 200
    assert labels == {} and bad <= 1


def test_result_csv_is_read_only_up_to_its_cap():
    data = b"a.png,1\n" + b"\n" * MAX_RESULT_CSV_BYTES + b"b.png,2\n"
    assert parse_result_csv(data, {"a.png", "b.png"}) == ({"a.png": 1}, 0)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_result_csv_line_cut_by_the_cap_is_dropped_not_read_as_a_shorter_label(newline):
    head = b"a.png,1" + newline
    spaces = b" " * (MAX_RESULT_CSV_BYTES - len(head) - len(b"b.png,12"))  # blanks around a field are allowed
    data = head + spaces + b"b.png,123" + newline  # the cap falls between `2` and `3`
    assert parse_result_csv(data, {"a.png", "b.png"}) == ({"a.png": 1}, 0)


def test_result_csv_label_of_thousands_of_digits_is_a_bad_line_not_a_crash():
    data = ("a.png," + "9" * 5000 + "\nb.png,-" + "1" * 4301 + "\nc.png,3\n").encode()
    assert parse_result_csv(data, {"a.png", "b.png", "c.png"}) == ({"c.png": 3}, 2)


def test_result_csv_label_longer_than_12_chars_is_a_bad_line():
    data = b"a.png,0000000000001\nb.png,000000000001\n"
    assert parse_result_csv(data, {"a.png", "b.png"}) == ({"b.png": 1}, 1)


def test_result_csv_name_longer_than_255_chars_is_a_bad_line():
    long_name = "n" * 256 + ".png"
    labels, bad = parse_result_csv(f"{long_name},1\n".encode(), {long_name})
    assert labels == {} and bad == 1


@pytest.mark.parametrize("digit", ["٣", "³", "３", "߃", "𝟑"])
def test_result_csv_unicode_digits_are_bad_lines(digit):
    data = f"a.png,{digit}\nb.png,+{digit}\nc.png,1{digit}\nd.png,4\n".encode()
    assert parse_result_csv(data, {"a.png", "b.png", "c.png", "d.png"}) == ({"d.png": 4}, 3)


def test_result_csv_accepts_signs_tabs_and_a_bom_and_splits_on_the_first_comma_only():
    names = {"a.png", "b.png", "c.png", "d.png", "e.png"}
    data = "\ufeffa.png,+3\r\n\tb.png\t,\t-1\t\r\nc.png,1,2\nd.png,1_000\ne.png,- 1\n".encode()
    assert parse_result_csv(data, names) == ({"a.png": 3, "b.png": -1}, 3)


def test_result_csv_blank_and_whitespace_only_lines_are_ignored():
    data = b"\n \n\t\t\n\r\n \r\na.png,1\n\n"
    assert parse_result_csv(data, {"a.png"}) == ({"a.png": 1}, 0)


def test_result_csv_nul_bytes_make_a_bad_line_not_a_crash():
    data = b"a.png\x00,1\nb.png,1\x00\n\x00\nc.png,\x002\n\x00d.png,4\ne.png,5\n"
    assert parse_result_csv(data, {"a.png", "b.png", "c.png", "d.png", "e.png"}) == ({"e.png": 5}, 5)


def test_result_csv_invalid_utf8_is_a_bad_line():
    data = b"\xff\xfe.png,1\na.png,\xff\nb.png,2\n"
    assert parse_result_csv(data, {"a.png", "b.png"}) == ({"b.png": 2}, 2)


def test_result_csv_duplicate_name_keeps_the_first_line():
    assert parse_result_csv(b"a.png,1\na.png,2\na.png,x\n", {"a.png"}) == ({"a.png": 1}, 1)


@pytest.mark.parametrize("value", ["3.0", "nan", "1e9", "0x1", "inf", "", "+", "-", "Ⅻ"])
def test_result_csv_non_integer_labels_are_bad_lines(value):
    assert parse_result_csv(f"a.png,{value}\n".encode(), {"a.png"}) == ({}, 1)


# --- tar streams (the Docker runtime) -----------------------------------------------------------------------------


def test_tar_keeps_only_top_level_regular_files_and_never_resolves_links_or_special_files():
    members = [
        (_info("./"), b""),
        (_info("./a.png", size=4), b"data"),
        (_info("./hard.png", tarfile.LNKTYPE, linkname="./a.png"), b""),
        (_info("./outside.png", tarfile.LNKTYPE, linkname="/etc/shadow"), b""),
        (_info("./sym.png", tarfile.SYMTYPE, linkname="/etc/passwd"), b""),
        (_info("./fifo.png", tarfile.FIFOTYPE), b""),
        (_info("./char.png", tarfile.CHRTYPE), b""),
        (_info("./block.png", tarfile.BLKTYPE), b""),
        (_info("./x.png", tarfile.DIRTYPE), b""),
        (_info("./x.png/y.png", size=1), b"y"),
        (_info("../up.png", size=1), b"u"),
        (_info("/abs.png", size=1), b"a"),
    ]
    members[-4][0].mode = members[-3][0].mode = stat.S_IFCHR | 0o666
    files, skipped = collect_tar_stream(_chunks(_tar_bytes(members)))
    assert files == {"a.png": b"data"}
    assert sorted(skipped) == sorted(
        ["hard.png", "outside.png", "sym.png", "fifo.png", "char.png", "block.png", "x.png", "x.png/y.png"]
        + ["../up.png", "/abs.png"]
    )


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_names_that_are_not_utf8_are_skipped_and_listed_printably(tar_format):
    bad_name = os.fsdecode(b"./bad\xff\xfe.png")
    members = [(_info(bad_name, size=1), b"x"), (_info("ok.png", size=2), b"ok")]
    files, skipped = collect_tar_stream(_chunks(_tar_bytes(members, tar_format)))
    assert files == {"ok.png": b"ok"}
    assert skipped == ["bad\\xff\\xfe.png"]
    "".join(skipped).encode("utf-8")  # storable in SQLite and printable: no lone surrogates


def test_tar_of_200000_tiny_files_keeps_max_output_files_and_lists_the_rest():
    files, skipped = collect_tar_stream(_lazy_tar(_info(f"./f{i:06d}.png") for i in range(200_000)))
    assert len(files) == MAX_OUTPUT_FILES
    assert set(files) == {f"f{i:06d}.png" for i in range(MAX_OUTPUT_FILES)}
    assert skipped == [f"f{i:06d}.png" for i in range(MAX_OUTPUT_FILES, 200_000)]


def test_tar_reader_holds_no_member_it_has_read():
    # 10,000 members that are neither kept nor listed: tarfile alone would hold about 4 MiB of them.
    (result, peak) = _peak_mib(
        lambda: collect_tar_stream(_lazy_tar(_info(".", tarfile.DIRTYPE) for _ in range(10_000)))
    )
    assert result == ({}, []) and peak < 1


def test_tar_members_past_the_entry_bound_are_drained_unparsed(monkeypatch):
    monkeypatch.setattr(outputs_read, "MAX_OUTPUT_ENTRIES", 10)
    members = [(_info(f"d{i}", tarfile.DIRTYPE), b"") for i in range(50)] + [(_info("late.png", size=1), b"x")]
    chunks = list(_chunks(_tar_bytes(members), 512))
    consumed = []
    files, skipped = collect_tar_stream(consumed.append(chunk) or chunk for chunk in chunks)
    assert files == {} and skipped == [f"d{i}" for i in range(10)]
    assert len(consumed) == len(chunks)  # the whole stream was read, so Docker's connection ends cleanly


def test_tar_file_over_the_size_cap_is_skipped_unread():
    infos = [_info("big.png", size=MAX_OUTPUT_FILE_BYTES + 1), _info("small.png")]
    files, skipped = collect_tar_stream(_lazy_tar(infos))
    assert files == {"small.png": b""} and skipped == ["big.png"]


def test_tar_member_declaring_more_than_the_folder_holds_stops_reading_at_once():
    """A sparse file (`truncate -s 1P`) costs a tmpfs nothing, but Docker's archive streams every zero of it: the
    reader must stop at its header, not skip a petabyte."""
    infos = [_info("before.png", size=3), _info("sparse", size=2**50), _info("after.png")]
    consumed = []
    stream = (consumed.append(len(chunk)) or chunk for chunk in _lazy_tar(infos))
    files, skipped = collect_tar_stream(stream, capacity=8 * MiB)
    assert files == {"before.png": bytes(3)}
    assert len(skipped) == 1 and skipped[0].startswith("sparse (and whatever follows it")
    assert sum(consumed) < 16 * MiB


def test_tar_members_adding_up_to_more_than_the_folder_holds_stop_reading_there():
    infos = [_info(f"f{i}.png", size=3 * MiB) for i in range(4)]
    files, skipped = collect_tar_stream(_lazy_tar(infos), capacity=8 * MiB)
    assert sorted(files) == ["f0.png", "f1.png"] and skipped[0].startswith("f2.png (and whatever follows it")


@pytest.mark.parametrize("cut", [100, 512, 1000, 2047 + 512, 3000])
def test_tar_stream_that_ends_inside_a_header_or_file_is_a_host_fault(cut):
    # (Cut exactly between members, tarfile reads a clean end of archive; Docker's chunked HTTP stream then fails.)
    data = _tar_bytes([(_info("a.png", size=1000), b"a" * 1000), (_info("b.png", size=1000), b"b" * 1000)])
    with pytest.raises(HostFault, match="unreadable"):
        collect_tar_stream(_chunks(data[:cut]))


def test_empty_tar_stream_is_a_host_fault():
    with pytest.raises(HostFault):
        collect_tar_stream(iter([]))


# --- host folders (the process runtime) ---------------------------------------------------------------------------


def test_folder_skips_fifo_without_blocking(tmp_path: Path):
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "a.png").write_bytes(b"a")
    assert collect_folder(tmp_path) == ({"a.png": b"a"}, ["fifo.png"])


def test_folder_skips_device_nodes(tmp_path: Path):
    try:
        os.mknod(tmp_path / "null.png", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    assert collect_folder(tmp_path) == ({}, ["null.png"])


def test_folder_skips_hard_links_whose_content_may_live_outside(tmp_path: Path):
    outside = tmp_path / "secret"
    outside.write_bytes(b"secret")
    folder = tmp_path / "out"
    folder.mkdir()
    os.link(outside, folder / "hard.png")
    (folder / "a.png").write_bytes(b"a")
    assert collect_folder(folder) == ({"a.png": b"a"}, ["hard.png"])


def test_folder_named_like_an_image_is_skipped(tmp_path: Path):
    (tmp_path / "x.png").mkdir()
    (tmp_path / "x.png" / "y.png").write_bytes(b"y")
    assert collect_folder(tmp_path) == ({}, ["x.png"])


def test_folder_names_that_are_not_utf8_are_skipped_and_listed_printably(tmp_path: Path):
    os.close(os.open(os.fsencode(tmp_path) + b"/bad\xff.png", os.O_CREAT | os.O_WRONLY))
    (tmp_path / "ok.png").write_bytes(b"ok")
    files, skipped = collect_folder(tmp_path)
    assert files == {"ok.png": b"ok"} and skipped == ["bad\\xff.png"]


def test_folder_file_over_the_size_cap_is_skipped(tmp_path: Path):
    with open(tmp_path / "big.png", "wb") as f:
        f.truncate(MAX_OUTPUT_FILE_BYTES + 1)  # sparse: costs no disk
    assert collect_folder(tmp_path) == ({}, ["big.png"])


def test_folder_with_many_files_keeps_the_first_sorted_names_and_bounds_what_it_looks_at(tmp_path: Path, monkeypatch):
    # The real bounds are 100,000 files and 200,000 entries; the rule is the same at a size a test can write.
    monkeypatch.setattr(outputs_read, "MAX_OUTPUT_FILES", 100)
    monkeypatch.setattr(outputs_read, "MAX_OUTPUT_ENTRIES", 250)
    for i in range(2000):
        (tmp_path / f"f{i:04d}.png").write_bytes(b"")
    files, skipped = collect_folder(tmp_path)
    assert sorted(files) == [f"f{i:04d}.png" for i in range(100)]
    assert skipped == [f"f{i:04d}.png" for i in range(100, 250)]


# --- PNG decoding -------------------------------------------------------------------------------------------------


def test_png_declaring_100000x100000_pixels_is_refused_before_decoding():
    huge = _png(100_000, 100_000, 8, 0, _grey_rows())
    started = time.monotonic()
    (result, peak) = _peak_mib(lambda: decode_image(huge, SIZE, "L"))
    assert result is None and peak < 10 and time.monotonic() - started < 5
    assert decode_image(_png(100_000, 100_000, 8, 0, _grey_rows()), (100_000, 100_000), "L") is None


@pytest.mark.parametrize("kind", [b"zTXt", b"iCCP", b"iTXt"])
@pytest.mark.parametrize("where", ["before_idat", "after_idat"])
def test_compressed_chunk_bomb_is_refused_without_inflating_it(kind, where):
    payload = {b"zTXt": b"k\x00\x00", b"iCCP": b"p\x00\x00", b"iTXt": b"k\x00\x01\x00\x00\x00"}[kind] + _bomb()
    bomb = _png(*SIZE, 8, 0, _grey_rows(), **{where: _chunk(kind, payload)})
    assert len(bomb) < 300_000  # a small file that inflates to 200 MiB
    (result, peak) = _peak_mib(lambda: decode_image(bomb, SIZE, "L"))
    assert result is None
    assert peak < 20


def test_many_text_chunks_past_pillows_text_memory_cap_are_refused():
    text = _chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"a" * 1_000_000, 9))
    (result, peak) = _peak_mib(lambda: decode_image(_png(*SIZE, 8, 0, _grey_rows(), after_idat=text * 100), SIZE, "L"))
    assert result is None and peak < 20


def test_pixel_data_bomb_inflates_only_the_declared_size():
    bomb = _png(*SIZE, 8, 0, _grey_rows(7) + bytes(200 * MiB))
    (result, peak) = _peak_mib(lambda: decode_image(bomb, SIZE, "L"))
    assert peak < 20
    assert result is None or (result.shape == SIZE and (result == 7).all())


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_16_bit_grey_png_keeps_the_high_byte(mode):
    values = (np.arange(28 * 28, dtype=np.uint32).reshape(SIZE) * 83 % 65536).astype(np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    pixels = decode_image(_png(*SIZE, 16, 0, rows), SIZE, mode)
    expected = (values >> 8).astype(np.uint8)
    assert pixels is not None and pixels.dtype == np.uint8
    if mode == "RGB":
        assert pixels.shape == (*SIZE, 3) and all((pixels[..., c] == expected).all() for c in range(3))
    else:
        assert (pixels == expected).all()


def test_16_bit_rgb_png_keeps_the_high_byte():
    rows = b"".join(b"\x00" + bytes([0x12, 0x34, 0xAB, 0xCD, 0xFF, 0x00]) * SIZE[0] for _ in range(SIZE[1]))
    pixels = decode_image(_png(*SIZE, 16, 2, rows), SIZE, "RGB")
    assert pixels is not None and (pixels == np.array([0x12, 0xAB, 0xFF], dtype=np.uint8)).all()


def test_palette_png_decodes_to_its_colours_and_their_luma():
    palette_image = Image.new("P", SIZE)
    palette_image.putpalette([255, 0, 0, 0, 0, 255, 10, 20, 30])
    palette_image.paste(1, (0, 0, 14, 28))
    palette_image.paste(2, (14, 0, 28, 28))
    buffer = io.BytesIO()
    palette_image.save(buffer, format="PNG")
    rgb = decode_image(buffer.getvalue(), SIZE, "RGB")
    grey = decode_image(buffer.getvalue(), SIZE, "L")
    assert rgb is not None and grey is not None
    assert rgb[0, 0].tolist() == [0, 0, 255] and rgb[0, 27].tolist() == [10, 20, 30]
    # ITU-R 601-2 luma in Pillow's fixed point: L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16
    assert (
        grey[0, 0] == (7471 * 255 + 0x8000) >> 16
        and grey[0, 27] == (19595 * 10 + 38470 * 20 + 7471 * 30 + 0x8000) >> 16
    )
    assert (decode_image(buffer.getvalue(), SIZE, "RGB") == rgb).all()


def test_palette_png_without_a_palette_is_refused():
    rows = b"".join(b"\x00" + bytes(SIZE[0]) for _ in range(SIZE[1]))
    no_plte = _png(*SIZE, 8, 3, rows, before_idat=_chunk(b"tRNS", b"\x00"))
    assert decode_image(no_plte, SIZE, "L") is None
    assert decode_image(no_plte, SIZE, "RGB") is None


def test_short_icc_chunk_after_the_pixels_is_refused():
    assert decode_image(_png(*SIZE, 8, 0, _grey_rows(), after_idat=_chunk(b"iCCP", b"p\x00")), SIZE, "L") is None


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize(
    "pixels",
    [
        np.full((28, 28), 9, np.uint8),
        np.full((28, 28, 2), 9, np.uint8),
        np.full((28, 28, 3), 9, np.uint8),
        np.full((28, 28, 4), 9, np.uint8),
        np.ones((28, 28), bool),
    ],
    ids=["L", "LA", "RGB", "RGBA", "1"],
)
def test_every_8_bit_png_mode_converts_to_the_data_set_mode(pixels, mode):
    result = decode_image(_pillow_png(pixels), SIZE, mode)
    assert result is not None and result.dtype == np.uint8
    assert result.shape == (SIZE if mode == "L" else (*SIZE, 3))


def test_truncated_png_is_refused_or_decodes_to_the_same_pixels_at_every_cut():
    pixels = np.random.default_rng(0).integers(0, 256, SIZE, dtype=np.uint8)
    data = _pillow_png(pixels)
    for cut in range(len(data)):
        # Once every pixel byte is in, Pillow checks neither zlib's nor the chunk's checksum nor IEND.
        result = decode_image(data[:cut], SIZE, "L")
        assert result is None or (result == pixels).all(), cut
    assert decode_image(data[: (data.index(b"IDAT") + data.index(b"IEND")) // 2], SIZE, "L") is None


def test_png_with_a_bad_checksum_is_refused():
    data = bytearray(_png(*SIZE, 8, 0, _grey_rows()))
    data[40] ^= 0xFF  # inside IDAT: its CRC no longer matches
    assert decode_image(bytes(data), SIZE, "L") is None
