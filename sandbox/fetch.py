"""`sandbox dataset fetch`: a data set folder from a NIPS 2017 data set description (`dataset/nips17/*.csv`).

Each row names an image URL, a relative bounding box and its labels. The images are downloaded in parallel,
cropped to the box and resized to 299x299 RGB PNG, as the competition's own `download_images.py` did. Many of
the 2017 URLs are dead: every image that cannot be fetched is listed by id with its reason in
`fetch_failures.csv` and left out of `dataset.csv`, so the folder stays a valid data set (docs/datasets.md).
"""

from __future__ import annotations

import csv
import io
import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import requests
import urllib3
from PIL import Image, UnidentifiedImageError

from sandbox.bundled import shipped_csv
from sandbox.dataset import _SAFE_ID, DataSet, load_dataset
from sandbox.errors import DataSetError, SandboxError, one_line
from sandbox.store import write_atomically

SOURCE_COLUMNS = ("ImageId", "URL", "x1", "y1", "x2", "y2", "TrueLabel", "TargetClass")
IMAGE_SIZE = 299
NUM_CLASSES = 1001  # TF-Slim's ImageNet labels: 1..1000, 0 = background (never used as a label)
FAILURES_FILE = "fetch_failures.csv"
_CHUNK = 64 * 1024
MAX_PIXELS = 100_000_000  # a decompression bomb is refused before it is decoded


@dataclass(frozen=True)
class FetchOptions:
    """How hard to try: a dead or stalled server costs at most `deadline_s` per try, never a hang."""

    workers: int = 8
    retries: int = 2  # extra tries after a transient failure (network error, timeout, 5xx, 429)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0  # the longest wait for any one chunk of the response
    deadline_s: float = 120.0  # the longest one try may spend on the body (a trickling server)
    max_bytes: int = 50 * 1024 * 1024  # Flickr originals are a few MB; anything larger is not a photo
    max_redirects: int = 10
    backoff_s: float = 1.0  # wait before retry k: backoff_s * 2**k, with jitter
    limit: int | None = None  # only the first N rows


@dataclass(frozen=True)
class SourceRow:
    """One row of a NIPS 2017 description CSV; `row` keeps every column, attribution included."""

    image_id: str
    url: str
    box: tuple[float, float, float, float]
    row: dict[str, str]


class Failure(NamedTuple):
    """An image that could not be fetched, and why in one line: it is listed, never silently dropped."""

    image_id: str
    url: str
    reason: str


@dataclass(frozen=True)
class FetchProgress:
    """Passed to the progress callback: once at the start (`image_id` None), then once per image fetched or failed."""

    done: int
    total: int
    image_id: str | None = None
    error: str | None = None


@dataclass
class FetchResult:
    out: Path
    fetched: int
    already_there: int
    failures: list[Failure] = field(default_factory=list)
    dataset: DataSet | None = None

    @property
    def failures_csv(self) -> Path:
        return self.out / FAILURES_FILE


class FetchFailed(Exception):
    """One try of one image failed; `transient` says whether another try may succeed."""

    def __init__(self, reason: str, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


def _parse_float(path: Path, line: int, column: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataSetError(path, f"line {line}: {column} '{value}' is not a number", "fix the row") from None


def _parse_row(path: Path, line: int, row: dict[str, str]) -> SourceRow:
    """Checks one row before anything is downloaded: a bad description fails at once, not after an hour."""
    image_id = row.get("ImageId") or ""
    if not _SAFE_ID.match(image_id):
        raise DataSetError(path, f"line {line}: ImageId '{image_id}' must be letters, digits, . _ -", "fix the row")
    x1, y1, x2, y2 = (_parse_float(path, line, c, row.get(c) or "") for c in ("x1", "y1", "x2", "y2"))
    if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
        raise DataSetError(path, f"line {line}: box {x1},{y1},{x2},{y2} is not inside 0..1", "fix the row")
    for column in ("TrueLabel", "TargetClass"):
        value = row.get(column) or ""
        if not (value.isascii() and value.isdigit()) or not 0 <= int(value) < NUM_CLASSES:  # isdigit(): '²' too
            raise DataSetError(path, f"line {line}: {column} '{value}' is not a label 0..1000", "fix the row")
    return SourceRow(image_id, (row.get("URL") or "").strip(), (x1, y1, x2, y2), dict(row))


def read_source(path: Path, limit: int | None = None) -> tuple[list[str], list[SourceRow]]:
    """The columns and rows of a NIPS 2017 description CSV (the first `limit` rows when given)."""
    path = Path(path)
    if not path.is_file():
        raise DataSetError(path, "no such file", "give a NIPS 2017 data set CSV, e.g. dataset/nips17/dev_dataset.csv")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        missing = [c for c in SOURCE_COLUMNS if c not in columns]
        if missing:
            raise DataSetError(path, f"header lacks {', '.join(missing)}", "a NIPS 2017 data set CSV has them")
        rows: list[SourceRow] = []
        seen: set[str] = set()
        for line, row in enumerate(reader, start=2):
            if limit is not None and len(rows) >= limit:
                break
            parsed = _parse_row(path, line, row)
            if parsed.image_id in seen:
                raise DataSetError(path, f"line {line}: ImageId '{parsed.image_id}' appears twice", "keep one row")
            seen.add(parsed.image_id)
            rows.append(parsed)
    if not rows:
        raise DataSetError(path, "no images listed", "add rows")
    return columns, rows


def download(session: requests.Session, url: str, options: FetchOptions) -> bytes:
    """The body of `url`, or FetchFailed: bounded in time (connect, read and a total deadline) and in size."""
    body = bytearray()
    stream_download(session, url, options, body.extend)
    return bytes(body)


def stream_download(
    session: requests.Session, url: str, options: FetchOptions, write: Callable[[bytes], object]
) -> int:
    """`download`, with each piece of the body handed to `write` as it arrives (a weights file goes to disk, not
    to memory); returns the body's size. A FetchFailed may come after some pieces were written."""
    if not url.lower().startswith(("http://", "https://")):
        raise FetchFailed(f"URL scheme not http or https: {url[:80]}")
    deadline = time.monotonic() + options.deadline_s
    try:
        with session.get(
            url, stream=True, timeout=(options.connect_timeout_s, options.read_timeout_s), allow_redirects=True
        ) as response:
            status = response.status_code
            if status != 200:
                raise FetchFailed(f"HTTP {status} {response.reason or ''}".strip(), status == 429 or status >= 500)
            declared = response.headers.get("Content-Length")
            if declared and not (declared.isascii() and declared.isdigit()):  # a header is any Latin-1: '²' too
                declared = None
            if declared and int(declared) > options.max_bytes:
                raise FetchFailed(f"body of {declared} bytes is over the limit of {options.max_bytes}")
            size = _read_body(response, options, deadline, write)
            encoded = response.headers.get("Content-Encoding", "identity") != "identity"
            if declared and not encoded and size < int(declared):
                raise FetchFailed(f"truncated body: {size} of {declared} bytes", transient=True)
            return size
    except (TimeoutError, urllib3.exceptions.ReadTimeoutError):
        raise FetchFailed("read timeout", transient=True) from None
    except urllib3.exceptions.ProtocolError:
        raise FetchFailed("truncated body (connection closed early)", transient=True) from None
    except urllib3.exceptions.HTTPError as exc:
        raise FetchFailed(f"connection failed: {one_line(exc, 200)}", transient=True) from None
    except requests.TooManyRedirects:
        raise FetchFailed(f"more than {options.max_redirects} redirects (a redirect loop?)") from None
    except requests.Timeout as exc:
        kind = "connect" if isinstance(exc, requests.ConnectTimeout) else "read"
        raise FetchFailed(f"{kind} timeout", transient=True) from None
    except requests.exceptions.ChunkedEncodingError:
        raise FetchFailed("truncated body (connection closed early)", transient=True) from None
    except requests.ConnectionError as exc:
        raise FetchFailed(f"connection failed: {one_line(exc, 200)}", transient=True) from None
    except requests.RequestException as exc:
        raise FetchFailed(f"request failed: {one_line(exc, 200)}") from None


def _read_body(
    response: requests.Response, options: FetchOptions, deadline: float, write: Callable[[bytes], object]
) -> int:
    """Hands the body to `write` as it arrives and returns its size: `read1` returns after one network read, so a
    server that trickles a byte at a time (never idle long enough for the read timeout) still ends at the
    deadline."""
    raw = response.raw
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise FetchFailed(f"not complete after {options.deadline_s:g} s", transient=True)
        chunk = raw.read1(_CHUNK, decode_content=True) if hasattr(raw, "read1") else raw.read(1024, True)
        if not chunk:
            return size
        size += len(chunk)
        if size > options.max_bytes:
            raise FetchFailed(f"body over the limit of {options.max_bytes} bytes")
        write(chunk)


def to_png(data: bytes, box: tuple[float, float, float, float], size: int = IMAGE_SIZE) -> bytes:
    """Decodes the whole image (an HTML page or a truncated body fails here), crops it to the relative box and
    resizes it to `size`x`size` RGB, as NIPS 2017's download_images.py did (int() corners, Lanczos)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            if probe.width * probe.height > MAX_PIXELS:
                raise FetchFailed(f"{probe.width}x{probe.height} pixels is over the limit of {MAX_PIXELS}")
            probe.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = image.convert("RGB")
    except FetchFailed:
        raise
    except UnidentifiedImageError:
        raise FetchFailed(f"not an image ({_sniff(data)})") from None
    except Exception as exc:  # Pillow's decoders raise many kinds; one odd file must not stop the whole fetch
        raise FetchFailed(f"not a readable image ({one_line(exc, 200)})") from None
    w, h = rgb.size
    x1, y1, x2, y2 = box
    crop = (int(x1 * w), int(y1 * h), int(x2 * w), int(y2 * h))
    if crop[2] <= crop[0] or crop[3] <= crop[1]:
        raise FetchFailed(f"box {box} is empty on a {w}x{h} image")
    resized = rgb.crop(crop).resize((size, size), resample=Image.Resampling.LANCZOS)
    out = io.BytesIO()
    resized.save(out, format="PNG")
    return out.getvalue()


def _sniff(data: bytes) -> str:
    """What a body that is no image looks like, for the failure's reason: most often a dead link's HTML page."""
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    if head.startswith((b"<?xml", b"<")):
        return "XML or markup"
    return f"unknown format, {len(data)} bytes" if data else "empty body"


def _session(local: threading.local, options: FetchOptions) -> requests.Session:
    """One session per worker thread: requests' Session is not thread-safe, but reusing one keeps connections."""
    session = getattr(local, "session", None)
    if session is None:
        session = requests.Session()
        session.max_redirects = options.max_redirects
        session.headers["User-Agent"] = "adversarial-sandbox dataset fetch"
        local.session = session
    return session


def fetch_one(session: requests.Session, source: SourceRow, png: Path, options: FetchOptions) -> None:
    """Downloads, checks, crops and writes one image, retrying transient failures with exponential backoff."""
    for attempt in range(options.retries + 1):
        try:
            data = download(session, source.url, options)
            write_atomically(png, to_png(data, source.box))
            return
        except FetchFailed as exc:
            if not exc.transient or attempt == options.retries:
                if attempt:
                    raise FetchFailed(f"{exc.reason} (after {attempt + 1} tries)") from None
                raise
        time.sleep(options.backoff_s * 2**attempt * random.uniform(0.5, 1.0))


def _write_dataset(out: Path, source: Path, columns: list[str], rows: list[SourceRow], failed: set[str]) -> None:
    """dataset.csv (every source column kept: the attribution travels with the images) and dataset.json."""
    kept = [r for r in rows if r.image_id not in failed]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(r.row for r in kept)
    write_atomically(out / "dataset.csv", text.getvalue().encode("utf-8"))
    info = {
        "name": f"NIPS 2017 {source.stem}, {len(kept)} images",
        "num_classes": NUM_CLASSES,
        "label_convention": "tf-slim-1001",
        "label_offset": 1,
        "labels": "TF-Slim ImageNet: 1..1000, 0 = background (unused); subtract label_offset for 0..999 models",
        "source": source.name,
        "licence": "each image under its own licence (CC BY): see the License and Author columns of dataset.csv",
        "image_size": [IMAGE_SIZE, IMAGE_SIZE],
    }
    write_atomically(out / "dataset.json", (json.dumps(info, indent=2) + "\n").encode("utf-8"))


def _write_failures(out: Path, failures: list[Failure]) -> None:
    """fetch_failures.csv lists this run's failures; a run with none removes an earlier list."""
    path = out / FAILURES_FILE
    if not failures:
        path.unlink(missing_ok=True)
        return
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("ImageId", "URL", "reason"))
    writer.writerows((f.image_id, f.url, f.reason) for f in failures)
    write_atomically(path, text.getvalue().encode("utf-8"))


def fetch_dataset(
    source: Path,
    out: Path,
    options: FetchOptions | None = None,
    progress: Callable[[FetchProgress], None] | None = None,
) -> FetchResult:
    """Builds (or completes) the data set folder `out` from a NIPS 2017 description CSV.

    Resumable: an image whose PNG is already there is not fetched again. Raises DataSetError when the folder
    would hold no image at all; otherwise the failures are in the result and in `out/fetch_failures.csv`.
    """
    options = options or FetchOptions()
    source, out = shipped_csv(Path(source)), Path(out)
    columns, rows = read_source(source, options.limit)
    if out.exists() and not out.is_dir():
        raise DataSetError(out, "exists and is not a folder", "choose another OUT")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    todo = [r for r in rows if not (images / f"{r.image_id}.png").is_file()]
    result = FetchResult(out, fetched=0, already_there=len(rows) - len(todo))
    if progress:
        progress(FetchProgress(0, len(todo)))
    local = threading.local()

    def work(row: SourceRow) -> None:
        fetch_one(_session(local, options), row, images / f"{row.image_id}.png", options)

    with ThreadPoolExecutor(max_workers=max(1, options.workers), thread_name_prefix="fetch") as pool:
        futures = {pool.submit(work, row): row for row in todo}
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                row, error = futures[future], None
                try:
                    future.result()
                    result.fetched += 1
                except FetchFailed as exc:
                    error = exc.reason
                except (OSError, SandboxError) as exc:  # a full disk or an unwritable folder: stop, resume later
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise DataSetError(images, f"cannot write {row.image_id}.png ({one_line(exc, 200)})") from None
                if error is not None:
                    result.failures.append(Failure(row.image_id, row.url, error))
                if progress:
                    progress(FetchProgress(done, len(todo), row.image_id, error))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: running tries end within their deadline
            raise
    order = {r.image_id: i for i, r in enumerate(rows)}
    result.failures.sort(key=lambda f: order[f.image_id])
    _write_failures(out, result.failures)
    failed = {f.image_id for f in result.failures}
    if len(failed) == len(rows):
        raise DataSetError(
            source, f"none of the {len(rows)} images could be fetched", f"see {out / FAILURES_FILE} for each reason"
        )
    _write_dataset(out, source, columns, rows, failed)
    result.dataset = load_dataset(out)
    return result
