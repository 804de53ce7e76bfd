"""Reading what a submission wrote: every byte is hostile.

Output folders are collected as {file name: bytes} of top-level regular files only: links (hard links too),
folders, special files and names that are not UTF-8 are listed as skipped and never followed. Reading is bounded
in files, bytes per file and entries looked at. Images are decoded only when their header declares exactly the
data set's size; `result.csv` is read up to a cap, in time linear in its size.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import os
import stat
import struct
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from sandbox.errors import HostFault
from sandbox.runtime.base import MAX_OUTPUT_FILE_BYTES, MAX_OUTPUT_FILES

MAX_RESULT_CSV_BYTES = 16 * 1024**2
# Entries looked at in an output folder (files kept plus skipped), so a million empty files cost bounded memory.
MAX_OUTPUT_ENTRIES = 2 * MAX_OUTPUT_FILES
_MAX_NAME_CHARS = 255  # the longest file name Linux allows
_MAX_LABEL_CHARS = 12
_BLANKS = " \t\r\n"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Modes Pillow gives 8-bit PNGs; each converts to 'L' and 'RGB' by a fixed rule (palette lookup, alpha dropped).
_8BIT_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA"})
# 16-bit grey PNGs open as "I" in older Pillow, "I;16" in newer; convert() to 'L' clips them at 255.
_16BIT_GREY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L"})


class _ChunkStream(io.RawIOBase):
    """A read-only file over an iterator of byte chunks, so a tar stream is parsed without holding it all."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def _printable_name(name: str) -> str:
    """The name with bytes that are not UTF-8 shown as `\\xNN`, so it can be stored in SQLite and printed."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def collect_tar_stream(chunks: Iterable[bytes], capacity: int | None = None) -> tuple[dict[str, bytes], list[str]]:
    """Top-level regular files of a tar stream (as `docker cp` sends a folder).

    Hard links, symlinks, FIFOs, devices and folders are skipped by their tar type, never resolved. At most
    MAX_OUTPUT_ENTRIES members are parsed; the rest of the stream is drained unparsed, so the connection ends
    cleanly. A truncated or malformed archive raises HostFault.

    `capacity`: the most bytes the folder can hold. Files declaring more in all are sparse (a `truncate -s 1P`
    costs a tmpfs nothing, but its archive streams every zero): reading stops at the first such member, which is
    listed as skipped with the rest unread, and the caller closes the stream.
    """
    files: dict[str, bytes] = {}
    skipped: list[str] = []
    declared = 0
    iterator = iter(chunks)
    try:
        with tarfile.open(
            fileobj=io.BufferedReader(_ChunkStream(iterator)),
            mode="r|",
            encoding="utf-8",
            errors="surrogateescape",
        ) as tar:
            for _ in range(MAX_OUTPUT_ENTRIES):
                member = tar.next()
                if member is None:
                    break
                tar.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every member it parsed; this reader needs none of them
                parts = [part for part in PurePosixPath(member.name).parts if part != "."]
                if not parts:
                    continue
                name = member.name.removeprefix("./")
                shown = _printable_name(name)
                if shown != name or len(parts) != 1 or not member.isreg():
                    skipped.append(shown)
                    continue
                declared += member.size
                if capacity is not None and declared > capacity:
                    skipped.append(f"{shown} (and whatever follows it: declares more bytes than the folder holds)")
                    return files, skipped
                if len(files) >= MAX_OUTPUT_FILES or member.size > MAX_OUTPUT_FILE_BYTES:
                    skipped.append(parts[0])
                    continue
                extracted = tar.extractfile(member)
                files[parts[0]] = extracted.read() if extracted else b""
    except tarfile.TarError as exc:
        # Docker writes this archive after the submission ended, so a broken one is the host's fault, not a score.
        raise HostFault("", f"the output archive Docker sent is unreadable ({exc})") from None
    for _ in iterator:  # the members past the bound, drained unparsed so the connection ends cleanly
        pass
    return files, skipped


def collect_folder(folder: Path) -> tuple[dict[str, bytes], list[str]]:
    """Top-level regular files of a host folder, opened without following links and without blocking.

    Only the MAX_OUTPUT_ENTRIES first names (in sorted order) are looked at, so memory stays bounded whatever
    the folder holds. A file with more than one hard link is skipped: its content may live outside the folder.
    """
    files: dict[str, bytes] = {}
    skipped: list[str] = []
    with os.scandir(folder) as scan:
        entries = heapq.nsmallest(MAX_OUTPUT_ENTRIES, scan, key=lambda e: e.name)
    for entry in entries:
        shown = _printable_name(entry.name)
        if shown != entry.name or not entry.is_file(follow_symlinks=False) or len(files) >= MAX_OUTPUT_FILES:
            skipped.append(shown)
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            skipped.append(entry.name)
            continue
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_size > MAX_OUTPUT_FILE_BYTES:
                skipped.append(entry.name)
                continue
            files[entry.name] = f.read(MAX_OUTPUT_FILE_BYTES + 1)[:MAX_OUTPUT_FILE_BYTES]
    return files, skipped


def _png_size(data: bytes) -> tuple[int, int] | None:
    """The (width, height) a PNG's IHDR declares, read before Pillow sees the file."""
    if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def decode_image(data: bytes, size: tuple[int, int], mode: str) -> np.ndarray | None:
    """Decodes a PNG of exactly `size` into `mode`; None for anything else (wrong size, not PNG, a bomb).

    The size is checked in the header before decoding, so a huge declared image costs nothing; Pillow bounds
    compressed text and ICC chunks (MAX_TEXT_CHUNK, MAX_TEXT_MEMORY) and stops inflating pixel data at the
    declared size. 16-bit grey keeps its high byte, as Pillow itself does for 16-bit RGB.
    """
    if _png_size(data) != tuple(size):
        return None
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            if image.size != size:
                return None
            image.load()
            if image.mode in _16BIT_GREY_MODES:
                high = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
                return np.asarray(Image.fromarray(high).convert(mode), dtype=np.uint8)
            if image.mode not in _8BIT_MODES:
                return None
            return np.asarray(image.convert(mode), dtype=np.uint8)
    except MemoryError:
        raise  # the host ran short, not this file
    except Exception:
        # Pillow's PNG reader raises many types on hostile chunks (fuzzing found IndexError from a short iCCP after
        # IDAT and AssertionError converting a palette image with no PLTE): all are an undecodable image.
        return None


def clip_to_epsilon(adversarial: np.ndarray, clean: np.ndarray, epsilon: int) -> tuple[np.ndarray, int]:
    """Clips into [x - eps, x + eps] and [0, 255]; returns the image and how many pixel values moved."""
    clean16 = clean.astype(np.int16)
    low = np.clip(clean16 - epsilon, 0, 255)
    high = np.clip(clean16 + epsilon, 0, 255)
    adv16 = adversarial.astype(np.int16)
    clipped = np.clip(adv16, low, high)
    return clipped.astype(np.uint8), int(np.count_nonzero(clipped != adv16))


def pixel_hash(pixels: np.ndarray) -> str:
    """SHA-256 of the pixels with their shape, so equal images classified once whatever their PNG bytes."""
    header = f"{pixels.shape}:{pixels.dtype}".encode()
    return hashlib.sha256(header + np.ascontiguousarray(pixels).tobytes()).hexdigest()


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _parse_label_line(line: str) -> tuple[str, int] | None:
    """`NAME,LABEL` split on the first comma; None for a bad line. Linear time: no regex to backtrack on."""
    name, comma, label = line.partition(",")
    name, label = name.strip(_BLANKS), label.strip(_BLANKS)
    if not comma or not name or len(name) > _MAX_NAME_CHARS or len(label) > _MAX_LABEL_CHARS:
        return None
    digits = label[1:] if label.startswith(("+", "-")) else label
    # str.isdigit alone accepts Unicode digits ('٣', '³') that int() reads or refuses.
    if not (digits.isascii() and digits.isdigit()):
        return None
    try:
        return name, int(label)
    except ValueError:  # cannot happen after the checks above; one line must never abort a run
        return None


def parse_result_csv(data: bytes, known_names: set[str]) -> tuple[dict[str, int], int]:
    """Parses `FILENAME,LABEL` lines (docs/contract.md): returns {name: label} (first line wins) and the bad-line count.

    A UTF-8 BOM, CRLF and spaces or tabs around fields are tolerated; `3.0`, `nan`, unknown names and paths are
    not. Lines are read lazily, so 16 MiB of empty lines costs no more memory than one line.
    """
    if len(data) > MAX_RESULT_CSV_BYTES:  # read up to the cap, and not the line it cuts: `name,123` is no `name,12`
        end = max(data.rfind(b"\n", 0, MAX_RESULT_CSV_BYTES), data.rfind(b"\r", 0, MAX_RESULT_CSV_BYTES))
        data = data[: end + 1]
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="replace", newline=None)
    labels: dict[str, int] = {}
    bad = 0
    for line in text:
        if not line.strip(_BLANKS):
            continue
        parsed = _parse_label_line(line)
        if parsed is None or parsed[0] not in known_names:
            bad += 1
            continue
        name, label = parsed
        labels.setdefault(name, label)
    return labels, bad
