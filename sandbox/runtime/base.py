"""The runtime contract, stated once: a plain job in, a plain outcome out."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from typing import Protocol

from sandbox.errors import SandboxError

LABEL_APP = "org.adversarial-sandbox"
LABEL_RUN = "org.adversarial-sandbox.run"
LABEL_PIECE = "org.adversarial-sandbox.piece"
SUBMISSION_UID = "65534:65534"
# A run's weights folder (`--weights`): where a container sees it, and the variable naming it (set for a piece only
# when the run has one; the process runtime passes the host path instead).
WEIGHTS_MOUNT = "/weights"
WEIGHTS_ENV = "SANDBOX_WEIGHTS"
# What is read back from an output folder: a piece writes at most this many files, each at most this big.
MAX_OUTPUT_FILES = 100_000
MAX_OUTPUT_FILE_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class Limits:
    """Per-piece limits (docs/contract.md); every one is a CLI flag and is written to the run's manifest."""

    time_per_100_images: float = 500.0
    min_time: float = 60.0
    memory: str = "4g"
    cpus: float | None = None  # None: the machine's cores shared among the run's workers (`for_workers`)
    pids: int = 256
    output_size: str = "512m"
    tmp_size: str = "512m"
    log_bytes: int = 64 * 1024

    def time_limit(self, n_images: int) -> float:
        """Scaled by the piece's image count, as in 2017 (500 s per 100 images), but never below `min_time`:
        start-up (imports, loading weights) does not shrink with the piece, and a defense's last piece can hold
        a single image."""
        return max(self.min_time, self.time_per_100_images * max(n_images, 1) / 100.0)

    def threads(self) -> int:
        return max(1, math.ceil(self.cpus or 1))

    def cpu_share(self) -> float:
        """The CPUs one container gets: the set share, or (never resolved by `for_workers`) every core."""
        return self.cpus if self.cpus is not None else float(machine_cores())

    def for_workers(self, workers: int) -> Limits:
        """The limits with the CPU share filled in: every caller (run, validate, benchmarks) gets the same one."""
        if self.cpus is not None:
            return self
        return replace(self, cpus=float(max(1, machine_cores() // max(1, workers))))


def machine_cores() -> int:
    return os.cpu_count() or 1


def size_bytes(size: str) -> int:
    """`512m`, `4g`, `100k`, `1000` (bytes), as Docker reads them."""
    match = re.fullmatch(r"(\d+)([bkmg]?)", size.strip().lower())
    if not match:
        raise SandboxError(f"size '{size}'", "not a size", "use a size like 512m or 4g")
    return int(match.group(1)) * {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2)]


def default_workers(memory_per_piece: str) -> int:
    """One piece per core, but no more than the machine's memory holds at each piece's memory limit."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return machine_cores()
    return max(1, min(machine_cores(), total // max(1, size_bytes(memory_per_piece))))


@dataclass(frozen=True)
class ContainerJob:
    """Everything needed to run one piece; `{input}` and `{output}` in args are replaced by the runtime."""

    run_id: str
    piece_id: str
    image: str
    code_dir: str
    entry_point: str
    input_dir: str
    output_mount: str  # "/output_images" or "/output_data"
    args: tuple[str, ...]
    env: dict[str, str]
    time_limit_s: float
    limits: Limits
    gpus: str | None = None
    weights_dir: str | None = None  # a host folder of model weights, read-only to the submission (docs/imagenet.md)


@dataclass
class JobOutcome:
    exit_code: int | None
    timed_out: bool
    oom_killed: bool
    wall_s: float
    stdout_tail: str
    stderr_tail: str
    files: dict[str, bytes] = field(default_factory=dict)
    skipped_files: list[str] = field(default_factory=list)
    isolation: str = ""
    error: str | None = None
    memory_peak_bytes: int | None = None  # measured only when the runtime is asked to (validate)

    @classmethod
    def refused(cls, error: str, isolation: str) -> JobOutcome:
        """The submission never ran (no image, an entry point the kernel refused): the piece fails."""
        return cls(None, False, False, 0.0, "", "", isolation=isolation, error=error)


class Runtime(Protocol):
    name: str

    def isolation(self) -> str: ...

    def check(self, images: list[str]) -> dict[str, str]:
        """Returns {image: problem} for images it cannot run; raises RuntimeUnavailable when unusable."""
        ...

    def run(self, job: ContainerJob) -> JobOutcome:
        """The submission's outcome; raises HostFault when the host, not the submission, failed the job."""
        ...

    def wait_until_available(self, timeout_s: float) -> bool:
        """After a RuntimeUnavailable: waits up to `timeout_s` for the runtime to answer again."""
        ...

    def prepare_run(self, run_id: str, limits: Limits) -> None:
        """The run's first pieces are near: start, in the background, what each piece needs ready (output folders),
        so that the first ones do not wait for it."""
        ...

    def close(self) -> None:
        """The run is over, or stopping: release what the runtime keeps between pieces. From here on `run` raises
        RunStopping instead of starting anything, so a worker still busy when a run stops ends promptly."""
        ...

    def cleanup_run(self, run_id: str, settle_s: float = 10.0) -> int:
        """Removes what a killed run left behind, trying again for up to `settle_s` what is still in use; returns
        how many things were removed."""
        ...


def tail_text(data: bytes, limit: int) -> str:
    """The last `limit` bytes, decoded leniently: logs are hostile output too."""
    if len(data) > limit:
        data = b"[...]\n" + data[-limit:]
    return data.decode("utf-8", errors="replace")
