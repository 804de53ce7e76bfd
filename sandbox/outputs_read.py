"""Reading what a submission wrote (SPEC 6): every byte is hostile.

Output folders are collected as {file name: bytes} of top-level regular files only: links, folders and special
files are listed as skipped and never followed. Images are decoded only when their header declares at most the
data set's pixel count; `result.csv` is read up to a cap.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tarfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from sandbox.runtime.base import MAX_OUTPUT_FILE_BYTES, MAX_OUTPUT_FILES

MAX_RESULT_CSV_BYTES = 16 * 1024**2
_LABEL_LINE = re.compile(r"^\s*([^,]+?)\s*,\s*([+-]?\d+)\s*$")


class _ChunkStream(io.RawIOBase):
    """A read-only file over an iterator of byte chunks, so a tar stream is parsed without holding it all."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:  # type: ignore[override]
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def collect_tar_stream(chunks: Iterable[bytes]) -> tuple[dict[str, bytes], list[str]]:
    """Top-level regular files of a tar stream (as `docker cp` sends a folder)."""
    files: dict[str, bytes] = {}
    skipped: list[str] = []
    with tarfile.open(fileobj=io.BufferedReader(_ChunkStream(chunks)), mode="r|") as tar:
        for member in tar:
            parts = [part for part in PurePosixPath(member.name).parts if part != "."]
            if not parts:
                continue
            if len(parts) != 1 or not member.isreg():
                skipped.append(member.name.removeprefix("./"))
                continue
            if len(files) >= MAX_OUTPUT_FILES or member.size > MAX_OUTPUT_FILE_BYTES:
                skipped.append(parts[0])
                continue
            extracted = tar.extractfile(member)
            files[parts[0]] = extracted.read() if extracted else b""
    return files, skipped


def collect_folder(folder: Path) -> tuple[dict[str, bytes], list[str]]:
    """Top-level regular files of a host folder, opened without following links."""
    files: dict[str, bytes] = {}
    skipped: list[str] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file(follow_symlinks=False) or len(files) >= MAX_OUTPUT_FILES:
            skipped.append(entry.name)
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            skipped.append(entry.name)
            continue
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_OUTPUT_FILE_BYTES:
                skipped.append(entry.name)
                continue
            files[entry.name] = f.read(MAX_OUTPUT_FILE_BYTES + 1)[:MAX_OUTPUT_FILE_BYTES]
    return files, skipped


def decode_image(data: bytes, size: tuple[int, int], mode: str) -> np.ndarray | None:
    """Decodes a PNG of exactly `size` into `mode`; None for anything else (wrong size, not PNG, a bomb)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
                if image.size != size:
                    return None
                image.load()
                return np.asarray(image.convert(mode), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError):
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


def parse_result_csv(data: bytes, known_names: set[str]) -> tuple[dict[str, int], int]:
    """Parses `FILENAME,LABEL` lines (SPEC 2): returns {name: label} (first line wins) and the bad-line count.

    A UTF-8 BOM, CRLF and spaces around fields are tolerated; `3.0`, `nan`, unknown names and paths are not.
    """
    text = data[:MAX_RESULT_CSV_BYTES].decode("utf-8", errors="replace").removeprefix("\ufeff")
    labels: dict[str, int] = {}
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _LABEL_LINE.match(line)
        if not match or match.group(1) not in known_names:
            bad += 1
            continue
        labels.setdefault(match.group(1), int(match.group(2)))
    return labels, bad
