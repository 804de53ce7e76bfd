"""`sandbox weights fetch` and `check` against a local HTTP server standing in for the hub (no internet here), and
the run's `--weights` folder: refused in one line when missing, recorded with digests in the manifest.

No Docker: the safetensors files are written byte by byte (an 8-byte header length, a JSON table, the data).
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from sandbox.cli import main
from sandbox.competition import _weights_record
from sandbox.errors import SandboxError
from sandbox.weights import (
    HUB_ENV,
    INDEX,
    MODELS,
    check_folder,
    fetch_weights,
    safetensors_problem,
    verify_folder,
    weights_file,
)


def safetensors_bytes(n_floats: int = 4) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}).encode()
    return struct.pack("<Q", len(header)) + header + struct.pack(f"<{n_floats}f", *range(n_floats))


GOOD = safetensors_bytes()
# What each model id gets from the server: a whole file, or one way a download goes wrong.
SERVED = {
    "good.model": ("ok", GOOD),
    "missing.model": ("404", b"not here"),
    "truncated.model": ("ok", GOOD[:-5]),
    "html.model": ("ok", b"<!DOCTYPE html><html><body>Sign in to download</body></html>"),
    "flaky.model": ("503-once", GOOD),
}


class Hub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Hub

    def log_message(self, format, *args) -> None:
        pass

    def do_GET(self) -> None:
        parts = self.path.split("/")  # /timm/MODEL/resolve/main/model.safetensors
        model = parts[2] if len(parts) == 6 and parts[1] == "timm" else ""
        with self.server.lock:
            self.server.requests[model] += 1
            count = self.server.requests[model]
        kind, body = SERVED.get(model, ("404", b"no such model"))
        status = 404 if kind == "404" or self.path.split("/")[-1] != "model.safetensors" else 200
        if kind == "503-once" and count == 1:
            status = 503
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def hub() -> Iterator[Hub]:
    server = Hub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_fetch_writes_whole_files_and_reports_every_failure_by_model_id(hub: Hub, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    result = fetch_weights(folder, tuple(SERVED), hub=hub.url, timeout_s=5, retries=1)
    assert sorted(result.fetched) == ["flaky.model", "good.model"]  # the 503 was retried
    assert set(result.failures) == {"missing.model", "truncated.model", "html.model"}
    assert "HTTP 404" in result.failures["missing.model"]
    assert "truncated" in result.failures["truncated.model"]
    assert "not a safetensors file" in result.failures["html.model"]
    assert all("\n" not in reason and hub.url in reason for reason in result.failures.values())
    # Only whole files are left, readable by the submissions' user, and nothing half-written beside them.
    assert sorted(p.name for p in folder.iterdir()) == ["flaky.model.safetensors", "good.model.safetensors", INDEX]
    assert weights_file(folder, "good.model").read_bytes() == GOOD
    assert weights_file(folder, "good.model").stat().st_mode & 0o444 == 0o444
    index = json.loads((folder / INDEX).read_text())
    assert index["good.model"]["sha256"] == hashlib.sha256(GOOD).hexdigest()
    assert index["good.model"]["url"] == f"{hub.url}/timm/good.model/resolve/main/model.safetensors"


def test_a_rerun_downloads_only_what_is_missing(hub: Hub, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    fetch_weights(folder, ("good.model",), hub=hub.url, timeout_s=5, retries=0)
    again = fetch_weights(folder, ("good.model", "flaky.model"), hub=hub.url, timeout_s=5, retries=1)
    assert again.present == ["good.model"] and again.fetched == ["flaky.model"]
    assert hub.requests["good.model"] == 1


def test_the_hub_comes_from_the_environment_and_the_cli_exits_1_naming_each_failure(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HUB_ENV, hub.url)
    folder = tmp_path / "weights"
    args = ["weights", "fetch", str(folder), "--model", "good.model", "--model", "missing.model", "--timeout", "5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "good.model: fetched" in result.output
    assert "missing.model: failed:" in result.output and "HTTP 404" in result.output
    assert "1 fetched, 0 already there, 1 failed" in result.output


def test_an_unreachable_hub_is_a_failure_per_model_not_a_crash(tmp_path: Path) -> None:
    result = fetch_weights(tmp_path / "w", MODELS, hub="http://127.0.0.1:9", timeout_s=1, retries=0)
    assert set(result.failures) == set(MODELS) and not result.fetched
    assert all("ConnectionError" in reason for reason in result.failures.values())


def test_check_names_each_missing_broken_or_changed_file(hub: Hub, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    fetch_weights(folder, ("good.model", "flaky.model"), hub=hub.url, timeout_s=5, retries=1)
    assert verify_folder(folder, ("good.model", "flaky.model")) == {}
    weights_file(folder, "flaky.model").write_bytes(safetensors_bytes(5))  # whole, but not what was fetched
    (folder / "cut.model.safetensors").write_bytes(GOOD[:20])
    problems = verify_folder(folder, ("good.model", "flaky.model", "cut.model", "absent.model"))
    assert set(problems) == {"flaky.model", "cut.model", "absent.model"}
    assert "SHA-256 differs" in problems["flaky.model"]
    assert "missing" in problems["absent.model"] and "sandbox weights fetch" in problems["absent.model"]
    result = CliRunner().invoke(main, ["weights", "check", str(folder), "--model", "good.model", "--model", "x.y"])
    assert result.exit_code == 1
    assert "good.model: ok" in result.output and "x.y.safetensors missing" in result.output
    (folder / "weights.json").write_text("{broken")  # no record: whole files, but not known to be the ones fetched
    assert "not recorded in weights.json" in verify_folder(folder, ("good.model",))["good.model"]


def test_safetensors_check_on_edge_cases(tmp_path: Path) -> None:
    path = tmp_path / "f.safetensors"
    for data, expected in [
        (GOOD, None),
        (b"", "shorter than a safetensors header"),
        (struct.pack("<Q", 10**12) + b"{}", "bad header length"),
        (GOOD + b"x", "truncated or padded"),
        (struct.pack("<Q", 2) + b"{}", "holds no tensors"),
        (struct.pack("<Q", 35) + b'{"t": {"data_offsets": ["0", "4"]}}', "has data_offsets"),
        (struct.pack("<Q", 20_002) + b"[" * 10_001 + b"]" * 10_001, "not a safetensors file"),
    ]:
        path.write_bytes(data)
        problem = safetensors_problem(path)
        assert (problem is None) if expected is None else (expected in (problem or "")), (data[:20], problem)


def test_a_missing_weights_folder_is_one_line_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SandboxError) as caught:
        check_folder(tmp_path / "nope")
    assert "\n" not in str(caught.value) and "sandbox weights fetch" in str(caught.value)
    result = CliRunner().invoke(main, ["run", "--weights", str(tmp_path / "nope"), "--out", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert "no such weights folder" in result.output and "sandbox weights fetch" in result.output
    assert not (tmp_path / "run").exists()  # refused before a run folder was made


def test_the_manifest_records_the_folder_and_every_files_digest(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)  # pytest makes it 0700: the submissions' user could not read it
    (tmp_path / "a.safetensors").write_bytes(GOOD)
    (tmp_path / "notes.txt").write_text("anything a submission could read is on record")
    record = _weights_record(tmp_path)
    assert record == {
        "path": str(tmp_path.resolve()),
        "sha256": {
            "a.safetensors": hashlib.sha256(GOOD).hexdigest(),
            "notes.txt": hashlib.sha256(b"anything a submission could read is on record").hexdigest(),
        },
    }
    assert _weights_record(None) is None


def test_a_weights_folder_the_submissions_cannot_read_is_refused_with_the_chmod(tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "a.safetensors").write_bytes(GOOD)
    (folder / "a.safetensors").chmod(0o600)
    with pytest.raises(SandboxError) as caught:
        check_folder(folder)
    assert "uid 65534" in str(caught.value) and f"chmod -R a+rX {folder}" in str(caught.value)
    (folder / "a.safetensors").chmod(0o644)
    folder.chmod(0o700)
    with pytest.raises(SandboxError, match="not readable"):
        check_folder(folder)
    folder.chmod(0o755)
    assert check_folder(folder) == folder.resolve()


def test_the_process_runtime_passes_the_weights_folder_itself(tmp_path: Path) -> None:
    """No mount without containers: the host path, in the same variable the container gets."""
    from sandbox.runtime.base import ContainerJob, Limits
    from sandbox.runtime.process import ProcessRuntime

    code = tmp_path / "code"
    code.mkdir()
    (code / "run.sh").write_text('#!/bin/sh\necho "weights=$SANDBOX_WEIGHTS"\n')
    (code / "run.sh").chmod(0o755)
    (tmp_path / "input").mkdir()
    for weights, expected in ((tmp_path / "w", f"weights={tmp_path / 'w'}"), (None, "weights=")):
        job = ContainerJob(
            "run", "piece", "none", str(code), "run.sh", str(tmp_path / "input"), "/output_data", (), {}, 30.0,
            Limits(), weights_dir=str(weights) if weights else None,
        )  # fmt: skip
        outcome = ProcessRuntime().run(job)
        assert outcome.exit_code == 0 and outcome.stdout_tail.strip() == expected
