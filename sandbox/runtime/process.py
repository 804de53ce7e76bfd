"""ProcessRuntime: the same folder contract as a local process, for trusted code and machines without Docker.

It isolates nothing: no network cut, no memory or output cap, the host's files in reach. Only the time limit
holds (the whole process group is killed). The run says so loudly and records `process (no isolation)`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from sandbox.errors import RunStopping
from sandbox.outputs_read import collect_folder
from sandbox.runtime.base import WEIGHTS_ENV, ContainerJob, JobOutcome, Limits, tail_text

WARNING = "--runtime process isolates nothing: submissions run as you, with your files and network. Trusted code only."


_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV", "PYTHONPATH", "LD_LIBRARY_PATH")


class ProcessRuntime:
    name = "process"

    def __init__(self) -> None:
        self.closed = False
        self._running: set[int] = set()  # process group ids of the pieces running now
        self._lock = threading.Lock()

    def isolation(self) -> str:
        return "process (no isolation)"

    def check(self, images: list[str]) -> dict[str, str]:
        return {}

    def cleanup_run(self, run_id: str, settle_s: float = 10.0) -> int:
        return 0  # its processes end with each piece

    def wait_until_available(self, timeout_s: float) -> bool:
        return True

    def prepare_run(self, run_id: str, limits: Limits) -> None:
        pass  # a piece's output folder is a temporary folder, made in no time

    def close(self) -> None:
        """Ends the pieces still running (their whole process groups) and starts no more."""
        with self._lock:
            self.closed = True
            running = list(self._running)
        for pid in running:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def run(self, job: ContainerJob) -> JobOutcome:
        if self.closed:
            raise RunStopping(job.piece_id, "not started: the run is stopping", "resume the run folder to run it")
        with tempfile.TemporaryDirectory(prefix="sbx-out-") as out_root:
            output_dir = Path(out_root) / job.output_mount.strip("/")
            output_dir.mkdir()
            args = [arg.format(input=job.input_dir, output=str(output_dir)) for arg in job.args]
            entry = Path(job.code_dir) / job.entry_point
            # Not the host's whole environment (tokens, credentials): only what a program needs to start.
            env = {key: os.environ[key] for key in _PASSED_ENV if key in os.environ}
            env.update({**job.env, "TMPDIR": out_root, "HOME": out_root})
            if job.weights_dir:  # not read-only here: this runtime isolates nothing
                env[WEIGHTS_ENV] = job.weights_dir
            if job.gpus and job.gpus != "all":
                env["CUDA_VISIBLE_DEVICES"] = job.gpus
            elif not job.gpus:
                env["CUDA_VISIBLE_DEVICES"] = ""
            with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
                started = time.monotonic()
                timed_out = False
                try:
                    process = subprocess.Popen(
                        [str(entry), *args],
                        cwd=job.code_dir,
                        env=env,
                        stdout=stdout,
                        stderr=stderr,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                except OSError as exc:
                    return JobOutcome.refused(f"could not start {entry}: {exc.strerror}", self.isolation())
                with self._lock:
                    self._running.add(process.pid)
                    if self.closed:  # closed while it started: `close` did not see it
                        os.killpg(process.pid, signal.SIGKILL)
                try:
                    exit_code: int | None = process.wait(timeout=job.time_limit_s)
                except subprocess.TimeoutExpired:
                    timed_out, exit_code = True, None
                finally:
                    # Whatever it forked is ended too, so nothing writes into the outputs while they are read.
                    try:
                        os.killpg(process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    process.wait()
                    with self._lock:
                        self._running.discard(process.pid)
                wall = time.monotonic() - started
                files, skipped = collect_folder(output_dir)
                logs = []
                for stream in (stdout, stderr):
                    size = stream.seek(0, os.SEEK_END)
                    stream.seek(max(0, size - job.limits.log_bytes))
                    logs.append(tail_text(stream.read(), job.limits.log_bytes))
            shutil.rmtree(output_dir, ignore_errors=True)
        return JobOutcome(
            exit_code=exit_code if exit_code is None or exit_code >= 0 else 128 - exit_code,
            timed_out=timed_out,
            oom_killed=False,
            wall_s=wall,
            stdout_tail=logs[0],
            stderr_tail=logs[1],
            files=files,
            skipped_files=skipped,
            isolation=self.isolation(),
        )
