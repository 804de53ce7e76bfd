"""Output folders on real Docker: one keeper container holds several fresh volumes, each serving one piece.

A piece must always get an empty folder no other piece has used; a keeper holding a large output is retired so its
files do not wait in memory; when the runtime closes, nothing of the run is left.
"""

from __future__ import annotations

import time
from concurrent.futures import wait
from pathlib import Path

import docker
import pytest

from sandbox.runtime.base import LABEL_RUN, ContainerJob, Limits
from sandbox.runtime.docker import KEEPER_FOLDERS, SMALL_OUTPUT_BYTES, DockerRuntime
from tests.submissions import BASE

# Lists what it finds in its output folder (it must be empty), then leaves a file named after its piece, and
# optionally a large file (too large for the host to read back: it is skipped, and still held in memory).
WRITER = """#!/bin/sh
seen=$(ls -A "$1")
printf '%s' "$seen" > "$1/seen.txt"
echo "$PIECE" > "$1/mine.txt"
if [ -n "$BIG_MB" ]; then dd if=/dev/zero of="$1/big" bs=1M count="$BIG_MB" 2>/dev/null; fi
"""


def _job(tmp_path: Path, run_id: str, piece: str, big_mb: int | None = None) -> ContainerJob:
    code = tmp_path / "code"
    if not code.exists():
        code.mkdir()
        (code / "run.sh").write_text(WRITER)
        (code / "run.sh").chmod(0o755)
        (tmp_path / "input").mkdir()
    env = {"PIECE": piece, **({"BIG_MB": str(big_mb)} if big_mb else {})}
    return ContainerJob(
        run_id, piece, BASE, str(code), "run.sh", str(tmp_path / "input"), "/output_images",
        ("{output}",), env, 60.0, Limits(cpus=1.0),
    )  # fmt: skip


def _keepers_created(client: docker.DockerClient, run_id: str, since: float) -> int:
    events = client.events(
        since=int(since), until=int(time.time()) + 1, decode=True,
        filters={"type": "container", "event": "create", "label": f"{LABEL_RUN}={run_id}"},
    )  # fmt: skip
    return sum(1 for event in events if event["Actor"]["Attributes"]["name"].endswith("-keeper"))


def _left_behind(client: docker.DockerClient, run_id: str) -> list[str]:
    label = {"label": f"{LABEL_RUN}={run_id}"}
    containers = client.containers.list(all=True, filters=label, ignore_removed=True)
    return [c.name for c in containers] + [v.name for v in client.volumes.list(filters=label)]


@pytest.fixture
def runtime():
    runtime = DockerRuntime(keep_spares=2)
    yield runtime
    runtime.close()


def test_each_piece_gets_an_empty_folder_of_its_own_and_keepers_hold_several(tmp_path, runtime):
    run_id, since = f"folders-{time.time_ns()}", time.time()
    pieces = 10
    for n in range(pieces):
        outcome = runtime.run(_job(tmp_path, run_id, f"p{n}"))
        assert outcome.exit_code == 0, outcome.stderr_tail
        assert outcome.files["seen.txt"] == b"" and outcome.files["mine.txt"] == f"p{n}\n".encode()
    runtime.close()
    created = _keepers_created(runtime.client, run_id, since)
    # One keeper per piece before; now one per KEEPER_FOLDERS, plus the first piece's own and spares left unused.
    assert 1 <= created <= pieces // KEEPER_FOLDERS + 3, created
    assert _left_behind(runtime.client, run_id) == []


def test_a_large_output_retires_its_keeper_and_the_next_piece_still_starts_empty(tmp_path, runtime):
    run_id, since = f"folders-{time.time_ns()}", time.time()
    big_mb = SMALL_OUTPUT_BYTES // 1024**2 + 1
    first = runtime.run(_job(tmp_path, run_id, "warm"))  # spares are being started meanwhile
    assert first.exit_code == 0
    time.sleep(2)  # the spares' keeper is up: the next pieces get folders from it
    big = runtime.run(_job(tmp_path, run_id, "big", big_mb))
    assert big.exit_code == 0 and "big" in big.skipped_files  # over the largest file the host reads
    after = [runtime.run(_job(tmp_path, run_id, f"after{n}")) for n in range(3)]
    assert all(o.files["seen.txt"] == b"" for o in after)
    # The big piece's keeper held one folder in use and spares: retired, it is removed at once, not at the end.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        keepers = runtime.client.containers.list(filters={"label": f"{LABEL_RUN}={run_id}"}, ignore_removed=True)
        holding_big = [k for k in keepers if k.name.endswith("-keeper") and _holds(k)]
        if not holding_big:
            break
        time.sleep(0.5)
    assert not holding_big, "the keeper of the large output was kept until the end"
    runtime.close()
    assert _keepers_created(runtime.client, run_id, since) >= 2
    assert _left_behind(runtime.client, run_id) == []


def _holds(keeper) -> bool:
    """Whether this keeper still holds the folder with the large file."""
    for mount in keeper.attrs["Mounts"]:
        if keeper.exec_run(["test", "-e", f"{mount['Destination']}/big"]).exit_code == 0:
            return True
    return False


def test_folders_prepared_before_a_run_serve_its_first_pieces(tmp_path, runtime):
    run_id, since = f"folders-{time.time_ns()}", time.time()
    runtime.prepare_run(run_id, Limits(cpus=1.0))
    runtime.prepare_run(run_id, Limits(cpus=1.0))  # a second call starts nothing more
    wait(runtime._preparations, timeout=60)  # started in the background: the run's set-up goes on meanwhile
    runtime.keep_spares = 0  # from here on, a keeper is started only for a piece that finds no folder ready
    for n in range(KEEPER_FOLDERS):
        outcome = runtime.run(_job(tmp_path, run_id, f"p{n}"))
        assert outcome.exit_code == 0 and outcome.files["seen.txt"] == b""
    assert _keepers_created(runtime.client, run_id, since) == 1  # every first piece took a prepared folder
    runtime.close()
    assert _left_behind(runtime.client, run_id) == []
