"""The run store: a piece is committed whole or not at all, a resume sees committed pieces only, and a run folder
made before some columns existed opens with them added."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.store import ADDED_PIECE_COLUMNS, AdversarialRecord, PieceRecord, RunStore
from tests.stores import piece_record, record_attack, record_defense

REPO = Path(__file__).resolve().parent.parent


def _count(run: Path, table: str) -> int:
    with sqlite3.connect(run / "store.sqlite") as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_committed_pieces_read_back_whole_from_a_new_connection(tmp_path):
    store = RunStore(tmp_path)
    attack = record_attack(store, "a", {"i0": "s0", "i1": "s1"}, failed=frozenset({"i1"}), worker="piece_0")
    defense = record_defense(store, "d", {"s0": 2, "s1": None})
    store.close()

    resumed = RunStore(tmp_path)
    assert resumed.finished_piece_ids() == {attack.piece_id, defense.piece_id}
    assert resumed.pieces() == sorted([attack, defense], key=lambda p: p.piece_id)
    assert resumed.adversarial() == [
        AdversarialRecord("a", "i0", "s0", 16, False, 0),
        AdversarialRecord("a", "i1", "s1", 16, True, 0),
    ]
    assert resumed.labels() == {("d", "s0"): 2, ("d", "s1"): None}
    assert resumed.distinct_hashes() == ["s0", "s1"]
    resumed.close()


def test_a_piece_whose_row_cannot_be_written_leaves_none_of_its_images(tmp_path):
    store = RunStore(tmp_path)
    record_attack(store, "kept", {"i0": "k0"})
    broken = piece_record("attack/a/0", "attack", "a", 2, status=None)  # status is NOT NULL: the insert fails
    images = [AdversarialRecord("a", "i0", "s0", 16, False, 0), AdversarialRecord("a", "i1", "s1", 16, False, 0)]
    with pytest.raises(sqlite3.IntegrityError):
        store.record_attack_piece(broken, images)
    with pytest.raises(sqlite3.IntegrityError):
        store.record_defense_piece(piece_record("defense/d/0", "defense", "d", 1, stdout_tail=None), {"s0": 1})
    # The store is still usable: the lock was released and no transaction is left open.
    record_defense(store, "d2", {"k0": 1})
    store.close()

    resumed = RunStore(tmp_path)
    assert resumed.finished_piece_ids() == {"attack/kept/0", "defense/d2/0"}
    assert resumed.adversarial() == [AdversarialRecord("kept", "i0", "k0", 16, False, 0)]
    assert resumed.labels() == {("d2", "k0"): 1}
    resumed.close()


KILLED_MID_PIECE = """
import os, sys
from sandbox.store import RunStore
from tests.stores import record_attack

store = RunStore(sys.argv[1])
record_attack(store, "first", {"i0": "f0"})

written = []

def die_before_the_piece_row(statement):
    # The piece's images are written, its row not yet, its transaction not committed: the process is killed.
    if statement.startswith("INSERT OR REPLACE INTO adversarial"):
        written.append(statement)
    if statement.startswith("INSERT OR REPLACE INTO pieces"):
        print(f"images written: {len(written)}", file=sys.stderr, flush=True)
        os._exit(9)

store._db.set_trace_callback(die_before_the_piece_row)
record_attack(store, "second", {"i0": "s0", "i1": "s1"})
"""


def test_a_run_killed_inside_a_piece_resumes_with_the_committed_pieces_only(tmp_path):
    run = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_PIECE, str(run)], cwd=REPO, capture_output=True)
    assert killed.returncode == 9, killed.stderr.decode()
    assert killed.stderr.decode().strip() == "images written: 2"
    store = RunStore(run)
    assert store.finished_piece_ids() == {"attack/first/0"}
    assert [r.submission_id for r in store.adversarial()] == ["first"]
    store.close()


def test_writing_a_piece_again_replaces_it(tmp_path):
    """A piece re-run after a host fault stores its new outcome; nothing of the old one is left twice."""
    store = RunStore(tmp_path)
    record_attack(store, "a", {"i0": "old"}, status="failed", exit_code=3)
    record_attack(store, "a", {"i0": "new"})
    assert [(p.piece_id, p.status) for p in store.pieces()] == [("attack/a/0", "ok")]
    assert [r.sha256 for r in store.adversarial()] == ["new"]
    store.close()


OLD_PIECES_TABLE = """
CREATE TABLE pieces (
    piece_id TEXT PRIMARY KEY, kind TEXT NOT NULL, submission_id TEXT NOT NULL, status TEXT NOT NULL,
    n_images INTEGER NOT NULL, epsilon INTEGER, exit_code INTEGER, timed_out INTEGER NOT NULL,
    oom_killed INTEGER NOT NULL, wall_s REAL NOT NULL, total_s REAL NOT NULL, time_limit_s REAL NOT NULL,
    failed_images INTEGER NOT NULL, clipped_pixels INTEGER NOT NULL, bad_lines INTEGER NOT NULL,
    skipped_files TEXT NOT NULL, isolation TEXT NOT NULL, error TEXT, stdout_tail TEXT NOT NULL,
    stderr_tail TEXT NOT NULL
);
INSERT INTO pieces VALUES ('attack/old/0', 'attack', 'old', 'ok', 10, 16, 0, 0, 0, 2.5, 3.0, 60.0, 0, 0, 0, '',
    'docker/runc', NULL, '', 'done');
"""


def test_a_store_from_before_the_added_columns_gets_them_on_reopening(tmp_path):
    with sqlite3.connect(tmp_path / "store.sqlite") as db:
        db.executescript(OLD_PIECES_TABLE)
        old_columns = [row[1] for row in db.execute("PRAGMA table_info(pieces)")]
    defaults = {f.name: f.default for f in dataclasses.fields(PieceRecord)}
    for _ in range(2):  # reopening a migrated store changes nothing
        store = RunStore(tmp_path)
        [old] = store.pieces()
        assert (old.piece_id, old.wall_s, old.stderr_tail) == ("attack/old/0", 2.5, "done")
        assert (old.started_at, old.ended_at, old.worker) == (0.0, 0.0, "")  # left out of the timeline
        # Each added column's SQL default is what the record says for "not recorded".
        assert {name: getattr(old, name) for name in ADDED_PIECE_COLUMNS} == {
            name: defaults[name] for name in ADDED_PIECE_COLUMNS
        }
        store.close()
    store = RunStore(tmp_path)
    new = record_attack(store, "new", {"i0": "s0"}, started_at=100.0, ended_at=102.5, worker="piece_1")
    assert store.pieces()[0] == new
    store.close()
    with sqlite3.connect(tmp_path / "store.sqlite") as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(pieces)")]
    assert columns == old_columns + list(ADDED_PIECE_COLUMNS)
    assert {"started_at", "ended_at", "worker"} <= set(ADDED_PIECE_COLUMNS)


def test_the_defense_plan_is_fixed_once_saved(tmp_path):
    store = RunStore(tmp_path)
    store.save_defense_plan([("defense/d/0", "d", ("b", "a")), ("defense/d/1", "d", ("c",))])
    # A second plan for an image the defense already has is ignored: a stored piece never moves.
    store.save_defense_plan([("defense/d/2", "d", ("a", "e")), ("defense/x/0", "x", ("a",))])
    store.close()
    resumed = RunStore(tmp_path)
    assert resumed.defense_plan() == {
        "defense/d/0": ("d", ("a", "b")),
        "defense/d/1": ("d", ("c",)),
        "defense/d/2": ("d", ("e",)),
        "defense/x/0": ("x", ("a",)),
    }
    resumed.close()


def test_defenses_planned_on_the_same_images_share_one_stored_set(tmp_path):
    """One piece per defense over every image is the usual plan: stored as one set, not defenses x images rows."""
    store = RunStore(tmp_path)
    images = tuple(f"{k:064x}" for k in range(1000))
    store.save_defense_plan([(f"defense/d{d}/0", f"d{d}", images) for d in range(50)])
    store.close()
    assert _count(tmp_path, "image_sets") == 1000 and _count(tmp_path, "defense_pieces") == 50
    resumed = RunStore(tmp_path)
    plan = resumed.defense_plan()
    assert len(plan) == 50 and all(hashes == images for _, hashes in plan.values())
    assert len({id(hashes) for _, hashes in plan.values()}) == 1  # one tuple in memory too
    resumed.drop_submission("d0")
    assert "defense/d0/0" not in resumed.defense_plan() and len(resumed.defense_plan()) == 49
    resumed.close()
    assert _count(tmp_path, "image_sets") == 1000  # still held by the other defenses


def test_a_plan_stored_row_by_row_by_an_older_version_is_read_and_extended(tmp_path):
    store = RunStore(tmp_path)
    store.close()
    with sqlite3.connect(tmp_path / "store.sqlite") as db:  # the rows an earlier version wrote
        db.executemany(
            "INSERT INTO defense_plan VALUES (?, ?, ?)", [("defense/d/0", "d", "a"), ("defense/d/0", "d", "b")]
        )
    store = RunStore(tmp_path)
    store.save_defense_plan([("defense/d/1", "d", ("b", "c"))])  # `b` is planned already: only `c` is new
    assert store.defense_plan() == {"defense/d/0": ("d", ("a", "b")), "defense/d/1": ("d", ("c",))}
    store.close()


def test_meta_values_survive_reopening(tmp_path):
    store = RunStore(tmp_path)
    assert store.get_meta("settings") is None and store.meta_json("settings") is None
    store.set_meta("settings", json.dumps({"epsilon": [16]}))
    store.set_meta("run_id", "r1")
    store.set_meta("run_id", "r2")
    store.close()
    resumed = RunStore(tmp_path)
    assert resumed.meta_json("settings") == {"epsilon": [16]} and resumed.get_meta("run_id") == "r2"
    resumed.close()


def test_adversarial_pngs_are_stored_by_hash_and_never_rewritten(tmp_path):
    store = RunStore(tmp_path)
    sha = "ab" + "0" * 62
    store.save_adversarial_pngs({sha: b"first"})
    path = tmp_path / "adversarial" / "ab" / f"{sha}.png"
    assert store.adversarial_path(sha) == path and path.read_bytes() == b"first"
    store.save_adversarial_pngs({sha: b"again"})  # same pixels, same hash: the file is already whole
    assert path.read_bytes() == b"first"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left beside it
    store.close()
    assert _count(tmp_path, "adversarial") == 0


def test_an_adversarial_png_cut_short_by_a_power_cut_is_written_again(tmp_path):
    """A piece killed after renaming its files into place, before the flush: after a power cut a file can be
    empty under its final name. The piece runs again on resume; its files must not be taken as already whole."""
    store = RunStore(tmp_path)
    sha = "cd" + "0" * 62
    path = store.adversarial_path(sha)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    store.save_adversarial_pngs({sha: b"whole png"})
    assert path.read_bytes() == b"whole png"
    store.close()
