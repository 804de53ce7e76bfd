"""Model weights for the ImageNet samples: a folder on the host, mounted read-only at /weights into every piece.

The weights are public (the NIPS 2017 paper's released Inception models, as timm publishes them) and too large for
the repository, so `sandbox weights fetch` downloads them where the hub is reachable, and a run names the folder
with `--weights`. Each model is one `MODEL_ID.safetensors` file; `weights.json` records where each came from and
its SHA-256, and the run's manifest records the digest of every file the submissions could read.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from sandbox.errors import SandboxError, one_line
from sandbox.fetch import FetchFailed, FetchOptions, stream_download
from sandbox.store import sha256_file, write_atomically

MODELS = ("inception_v3.tf_in1k", "inception_v3.tf_adv_in1k", "inception_resnet_v2.tf_ens_adv_in1k")
DEFAULT_HUB = "https://huggingface.co"
HUB_ENV = "SANDBOX_WEIGHTS_HUB"  # another hub or a mirror (the tests use a local server)
INDEX = "weights.json"
SUFFIX = ".safetensors"
MAX_HEADER = 100 * 1024**2
MAX_FILE = 2 * 1024**3
FETCH_FIX = "run `sandbox weights fetch DIR` where the hub is reachable (docs/imagenet.md)"


def weights_file(folder: Path, model: str) -> Path:
    return Path(folder) / f"{model}{SUFFIX}"


def hub_url(hub: str, model: str) -> str:
    """timm's own files on the Hugging Face hub: `timm/MODEL_ID`, `model.safetensors`."""
    return f"{hub.rstrip('/')}/timm/{model}/resolve/main/model{SUFFIX}"


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file (a truncated download, an HTML error page), or None.

    Reads only the header: an 8-byte little-endian length, a JSON table of tensors, then the data it spans."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "shorter than a safetensors header"
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= min(MAX_HEADER, size - 8):
                return "not a safetensors file (bad header length)"
            table = json.loads(f.read(length))
    except (OSError, ValueError, RecursionError) as exc:
        return f"not a safetensors file ({one_line(exc, 120)})"
    if not isinstance(table, dict):
        return "not a safetensors file (header is not a table)"
    ends = []
    for name, entry in table.items():
        offsets = entry.get("data_offsets") if name != "__metadata__" and isinstance(entry, dict) else None
        if offsets is None:
            continue
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
            return f"not a safetensors file (tensor {one_line(name, 60)!r} has data_offsets {one_line(offsets, 60)})"
        ends.append(offsets[1])
    if not ends:
        return "holds no tensors"
    if 8 + length + max(ends) != size:
        return f"truncated or padded: {size} bytes, the header describes {8 + length + max(ends)}"
    return None


def read_index(folder: Path) -> dict[str, dict]:
    """What `fetch` recorded of each model (its SHA-256 above all); {} when there is no readable record, and only
    the entries that are records."""
    path = Path(folder) / INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(index, dict):
        return {}
    return {model: entry for model, entry in index.items() if isinstance(entry, dict)}


def check_folder(folder: Path) -> Path:
    """The weights folder a run mounts: it must exist and be readable by the submissions' user (nobody, not the
    folder's owner); the samples then name any file missing in it."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise SandboxError(path, "no such weights folder", FETCH_FIX + ", or give the folder that holds them")
    closed = [path] if path.stat().st_mode & 0o005 != 0o005 else []
    closed += [p for p in path.iterdir() if p.is_file() and p.stat().st_mode & 0o004 == 0]
    if closed:
        raise SandboxError(
            closed[0], "not readable by the submissions' user (uid 65534)", f"run `chmod -R a+rX {path}`"
        )
    return path.resolve()


def folder_digests(folder: Path) -> dict[str, str]:
    """{file name: SHA-256} of every regular file at the top of the folder: what a submission could read."""
    return {
        entry.name: sha256_file(entry)
        for entry in sorted(Path(folder).iterdir())
        if entry.is_file() and not entry.is_symlink()
    }


def verify_folder(folder: Path, models: tuple[str, ...] = MODELS) -> dict[str, str]:
    """{model: problem} for each model whose file is missing, broken or differs from what `fetch` recorded."""
    folder = check_folder(folder)
    index = read_index(folder)
    problems = {}
    for model in models:
        path = weights_file(folder, model)
        if not path.is_file():
            problems[model] = f"{path} missing; {FETCH_FIX}"
        elif problem := safetensors_problem(path):
            problems[model] = f"{path}: {problem}; delete it and {FETCH_FIX}"
        elif not (expected := index.get(model, {}).get("sha256")):
            problems[model] = (
                f"{path}: not recorded in {INDEX} (missing or unreadable), so not known to be the file fetched; "
                f"delete it and {FETCH_FIX}"
            )
        elif sha256_file(path) != expected:
            problems[model] = f"{path}: its SHA-256 differs from the one in {INDEX}; delete it and fetch it again"
    return problems


@dataclass
class FetchResult:
    folder: Path
    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)  # already there and whole: not downloaded again
    failures: dict[str, str] = field(default_factory=dict)  # model id -> why


def _download(url: str, dest: Path, timeout_s: float) -> None:
    """Streams `url` into `dest` (a .part file beside the final one) through the data set fetch's download:
    bounded in size, in time without data and in total time (a trickling server too), truncation detected.

    The total is generous (an hour, or 60 x `timeout_s`): the largest file, ~220 MB, must also arrive over a slow
    link (60 KB/s); a stalled server still ends after `timeout_s` without data."""
    options = FetchOptions(read_timeout_s=timeout_s, deadline_s=max(timeout_s * 60, 3600), max_bytes=MAX_FILE)
    with requests.Session() as session, dest.open("wb") as f:
        stream_download(session, url, options, f.write)


def fetch_weights(
    folder: Path,
    models: tuple[str, ...] = MODELS,
    hub: str | None = None,
    timeout_s: float = 60.0,
    retries: int = 2,
    log: Callable[[str], None] | None = None,
) -> FetchResult:
    """Downloads each model's weights into `folder` unless a whole copy is there; every failure is kept by model id.

    A file is written under a `.part` name, checked to be a whole safetensors file, then renamed into place, so
    an interrupted fetch leaves nothing a run could mistake for weights."""
    hub = hub or os.environ.get(HUB_ENV) or DEFAULT_HUB
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    result = FetchResult(folder.resolve())
    index = read_index(folder)
    for model in models:
        path = weights_file(folder, model)
        if path.is_file() and safetensors_problem(path) is None and model in index:
            result.present.append(model)
            continue
        url = hub_url(hub, model)
        part = path.with_name(path.name + ".part")
        reason = ""
        for attempt in range(retries + 1):
            try:
                _download(url, part, timeout_s)
                problem = safetensors_problem(part)
                if problem is None:
                    break
                reason = f"{url}: {problem}"
            except FetchFailed as exc:
                reason = f"{url}: {exc.reason}"
            except OSError as exc:
                reason = f"{url}: {type(exc).__name__} ({one_line(exc, 160)})"
            if attempt < retries:
                time.sleep(0.5 * 2**attempt)
        else:
            part.unlink(missing_ok=True)
            result.failures[model] = reason
            if log:
                log(f"{model}: failed: {reason}")
            continue
        part.chmod(0o644)  # the container's user (nobody) reads it
        os.replace(part, path)
        index[model] = {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "url": url}
        write_atomically(folder / INDEX, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
        result.fetched.append(model)
        if log:
            log(f"{model}: fetched ({path.stat().st_size / 1e6:.0f} MB)")
    return result
