"""How a run's defense pieces get their inputs, and where a piece's outputs are made into its result.

Pieces given the same images share one read-only input folder: the attacks on a batch, the defenses on a chunk of
distinct images (usually every one of them: a folder written as attack pieces are stored). A piece returns once
its container has ended, and is finished (labels parsed, images clipped) by whoever stores it.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from sandbox.bundled import default_dataset_dir
from sandbox.dataset import load_dataset
from sandbox.pieces import RunContext, add_defense_inputs, run_defense_piece, shared_defense_inputs
from sandbox.plan import DefensePiece
from sandbox.runtime.base import ContainerJob, JobOutcome, Limits
from sandbox.runtime.process import ProcessRuntime
from sandbox.submission import load_submission
from tests.submissions import FIXED_LABEL_DEFENSE, write_submission

HASHES = tuple(f"{n:02x}" * 32 for n in range(5))


def _stored_pngs(tmp_path: Path) -> dict[str, Path]:
    stored = {}
    for sha in HASHES:
        path = tmp_path / "store" / f"{sha}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"\x89PNG " + sha.encode())
        stored[sha] = path
    return stored


def _context(tmp_path: Path, secret: str = "secret", runtime=None) -> RunContext:
    dataset = load_dataset(default_dataset_dir())
    return RunContext("r", tmp_path / "run", secret, Limits(cpus=1.0), dataset, runtime or ProcessRuntime())


def test_one_folder_per_chunk_written_once_and_read_only(tmp_path):
    stored = _stored_pngs(tmp_path)
    ctx = _context(tmp_path)
    folder, by_name = shared_defense_inputs(ctx, HASHES, stored.__getitem__)
    again, by_name_again = shared_defense_inputs(ctx, HASHES, stored.__getitem__)
    assert (again, by_name_again) == (folder, by_name)
    assert sorted(by_name.values()) == sorted(HASHES) and sorted(os.listdir(folder)) == sorted(by_name)
    for name, sha in by_name.items():
        assert os.path.samefile(folder / name, stored[sha])  # a link to the stored image, not a copy
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o444
        assert sha not in name and len(name) == len("0" * 20 + ".png")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no half-written folder left

    other, other_names = shared_defense_inputs(ctx, HASHES[:2], stored.__getitem__)
    assert other != folder and set(other_names) < set(by_name)  # another chunk's folder; an image keeps its name
    _, names_under_another_secret = shared_defense_inputs(_context(tmp_path / "b", "other"), HASHES, stored.__getitem__)
    assert not set(names_under_another_secret) & set(by_name)  # the names come from the run's secret


def test_the_folder_of_every_image_is_written_as_attacks_are_stored_and_made_exact_before_defenses(tmp_path):
    stored = _stored_pngs(tmp_path)
    ctx = _context(tmp_path)
    add_defense_inputs(ctx, HASHES[:3], stored.__getitem__)  # two attack pieces stored, their images overlapping
    add_defense_inputs(ctx, HASHES[2:4], stored.__getitem__)
    folder, by_name = shared_defense_inputs(ctx, HASHES[:4], stored.__getitem__)
    assert folder.name == "every-image" and sorted(by_name.values()) == sorted(HASHES[:4])
    assert sorted(os.listdir(folder)) == sorted(by_name)
    # A chunk that is not every image gets a folder of its own.
    chunk, _ = shared_defense_inputs(ctx, HASHES[:2], stored.__getitem__)
    assert chunk != folder and len(os.listdir(chunk)) == 2

    # A resume: one image was stored but never linked (a kill in between), one is no longer in the store.
    (folder / next(n for n, sha in by_name.items() if sha == HASHES[0])).unlink()
    add_defense_inputs(ctx, HASHES[:3] + HASHES[4:], stored.__getitem__, exactly=True)
    now, now_names = shared_defense_inputs(ctx, HASHES[:3] + HASHES[4:], stored.__getitem__)
    assert now == folder and sorted(os.listdir(folder)) == sorted(now_names)
    assert sorted(now_names.values()) == sorted(HASHES[:3] + HASHES[4:])


def test_concurrent_pieces_of_a_chunk_wait_for_one_whole_folder(tmp_path):
    stored = _stored_pngs(tmp_path)
    ctx = _context(tmp_path)
    seen: list[tuple[Path, int]] = []
    barrier = threading.Barrier(4, timeout=10)

    def piece() -> None:
        barrier.wait()
        folder, _ = shared_defense_inputs(ctx, HASHES, stored.__getitem__)
        seen.append((folder, len(os.listdir(folder))))

    threads = [threading.Thread(target=piece) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 4 and len({folder for folder, _ in seen}) == 1
    assert {count for _, count in seen} == {len(HASHES)}  # nobody saw a half-written folder


class RecordingRuntime(ProcessRuntime):
    """Runs each defense for real (the process runtime) and records its job and the thread that ran it."""

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[tuple[ContainerJob, str]] = []

    def run(self, job: ContainerJob) -> JobOutcome:
        self.jobs.append((job, threading.current_thread().name))
        return super().run(job)


def test_two_defenses_share_the_inputs_and_a_piece_is_finished_where_it_is_stored(tmp_path):
    stored = _stored_pngs(tmp_path)
    runtime = RecordingRuntime()
    ctx = _context(tmp_path, runtime=runtime)
    defenses = [load_submission(write_submission(tmp_path / "d", n, "defense", FIXED_LABEL_DEFENSE)) for n in "ab"]
    ran = []
    worker = threading.Thread(
        target=lambda: ran.extend(
            run_defense_piece(DefensePiece(f"defense/{d.id}/c", d.id, HASHES, 7), d, ctx, stored.__getitem__)
            for d in defenses
        ),
        name="piece_1",
    )
    worker.start()
    worker.join()

    (job_a, thread_a), (job_b, thread_b) = runtime.jobs
    assert job_a.input_dir == job_b.input_dir  # one folder for both defenses' pieces
    assert thread_a == thread_b == "piece_1"
    results = [r.finish() for r in ran]  # here, on another thread than the one that ran the containers
    for result in results:
        assert result.record.status == "ok" and result.record.worker == "piece_1"
        assert set(result.labels) == set(HASHES) and set(result.labels.values()) == {3}
        assert result.record.ended_at >= result.record.started_at
        assert result.record.total_s >= result.record.wall_s


def test_attacks_on_one_batch_share_an_input_folder_and_targeted_ones_get_their_own(tmp_path):
    from sandbox.pieces import run_attack_piece
    from sandbox.plan import AttackPiece
    from tests.submissions import write_submission as write

    runtime = RecordingRuntime()
    ctx = _context(tmp_path, runtime=runtime)
    ids = tuple(record.image_id for record in ctx.dataset.records[:4])
    copy = '#!/bin/sh\ncp "$1"/*.png "$2"/\n'
    subs = {n: load_submission(write(tmp_path / "a", n, "attack", copy)) for n in ("a", "b")}
    subs["t"] = load_submission(write(tmp_path / "a", "t", "targeted_attack", copy))
    ran = []
    for sub_id, targeted in (("a", False), ("b", False), ("t", True)):
        piece = AttackPiece(f"attack/{sub_id}/00000-e16", sub_id, targeted, (0,), ids, 16, 1)
        ran.append(run_attack_piece(piece, subs[sub_id], ctx).finish())

    (a, _), (b, _), (t, _) = runtime.jobs
    assert a.input_dir == b.input_dir != t.input_dir
    untargeted, targeted_folder = Path(a.input_dir), Path(t.input_dir)
    assert not set(os.listdir(untargeted)) & set(os.listdir(targeted_folder))  # other names for the targeted ones
    assert "target_class.csv" in os.listdir(targeted_folder) and len(os.listdir(untargeted)) == len(ids)
    for result in ran:  # each copied its inputs back: nothing clipped, nothing failed
        assert result.record.status == "ok" and result.record.failed_images == 0
        assert [image.image_id for image in result.images] == list(ids)
