"""The run store: one SQLite database in the run folder, written as pieces finish.

A piece's results and its `finished` row are committed in one transaction, and its adversarial PNGs are written
atomically before that commit, so a run killed at any moment leaves only whole pieces behind: resuming re-runs
exactly the pieces with no row.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pieces (
    piece_id TEXT PRIMARY KEY, kind TEXT NOT NULL, submission_id TEXT NOT NULL, status TEXT NOT NULL,
    n_images INTEGER NOT NULL, epsilon INTEGER, exit_code INTEGER, timed_out INTEGER NOT NULL,
    oom_killed INTEGER NOT NULL, wall_s REAL NOT NULL, total_s REAL NOT NULL, time_limit_s REAL NOT NULL,
    failed_images INTEGER NOT NULL, clipped_pixels INTEGER NOT NULL, bad_lines INTEGER NOT NULL,
    skipped_files TEXT NOT NULL, isolation TEXT NOT NULL, error TEXT, stdout_tail TEXT NOT NULL,
    stderr_tail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS adversarial (
    submission_id TEXT NOT NULL, image_id TEXT NOT NULL, sha256 TEXT NOT NULL, epsilon INTEGER NOT NULL,
    failed INTEGER NOT NULL, clipped_pixels INTEGER NOT NULL, PRIMARY KEY (submission_id, image_id)
);
CREATE TABLE IF NOT EXISTS labels (
    defense_id TEXT NOT NULL, sha256 TEXT NOT NULL, label INTEGER, PRIMARY KEY (defense_id, sha256)
);
CREATE TABLE IF NOT EXISTS defense_plan (
    piece_id TEXT NOT NULL, defense_id TEXT NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (defense_id, sha256)
);
CREATE TABLE IF NOT EXISTS defense_pieces (
    piece_id TEXT PRIMARY KEY, defense_id TEXT NOT NULL, set_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS image_sets (set_id TEXT NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (set_id, sha256));
CREATE TABLE IF NOT EXISTS submissions (
    submission_id TEXT PRIMARY KEY, kind TEXT NOT NULL, sha256 TEXT NOT NULL, added TEXT NOT NULL
);
"""
# Columns added after the first release: a run folder made before them is given them when it is reopened.
ADDED_PIECE_COLUMNS = {
    "started_at": "REAL NOT NULL DEFAULT 0",
    "ended_at": "REAL NOT NULL DEFAULT 0",
    "worker": "TEXT NOT NULL DEFAULT ''",
    "skipped_count": "INTEGER NOT NULL DEFAULT -1",
}


@dataclass(frozen=True)
class PieceRecord:
    piece_id: str
    kind: str  # attack, targeted_attack, defense
    submission_id: str
    status: str  # ok or failed
    n_images: int
    epsilon: int | None
    exit_code: int | None
    timed_out: bool
    oom_killed: bool
    wall_s: float
    total_s: float
    time_limit_s: float
    failed_images: int
    clipped_pixels: int
    bad_lines: int
    skipped_files: str
    isolation: str
    error: str | None
    stdout_tail: str
    stderr_tail: str
    started_at: float = 0.0  # seconds since the epoch, for the report's timeline
    ended_at: float = 0.0
    worker: str = ""  # which of the run's workers ran it
    skipped_count: int = -1  # output entries ignored (links, folders...); -1 in stores made before it was kept


@dataclass(frozen=True)
class AdversarialRecord:
    submission_id: str
    image_id: str
    sha256: str
    epsilon: int
    failed: bool
    clipped_pixels: int


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in blocks: weights files are hundreds of MB."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _rows_where_in(db: sqlite3.Connection, query: str, values: Sequence[str], size: int = 500) -> Iterator[tuple]:
    """The rows of `query`, whose `{}` becomes `IN (?, ...)` over `values`, asked in chunks: SQLite takes a bounded
    number of `?` in one statement."""
    values = list(values)
    for start in range(0, len(values), size):
        chunk = values[start : start + size]
        yield from db.execute(query.format(f"IN ({','.join('?' * len(chunk))})"), chunk)


@contextmanager
def atomic_file(path: Path, durable: bool = True) -> Iterator[BinaryIO]:
    """A file written under a temporary name and renamed into place: readers see the old file or the new one, never
    half of one, also after a full disk or a power cut. For a file written piece by piece (one too large to hold
    in memory); `write_atomically` writes one from bytes.

    `durable=False` leaves the flush to the caller (`sync_filesystem` once for many files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written file behind
        raise
    if durable:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)  # the rename itself survives a power cut
        finally:
            os.close(folder)


def write_atomically(path: Path, data: bytes, durable: bool = True) -> None:
    """`atomic_file` for bytes in hand."""
    with atomic_file(path, durable) as f:
        f.write(data)


def _syncfs():
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


_SYNCFS = _syncfs()


def sync_filesystem(folder: Path) -> None:
    """Flushes the file system that holds `folder` (Linux's syncfs; elsewhere every file system)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS is None or _SYNCFS(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def adversarial_image_path(run_dir: Path, sha256: str) -> Path:
    """Where an adversarial image of a run lies: a plain function of the run folder, which a piece on another
    machine of a cluster can hold (the store's database stays with the driver)."""
    return run_dir / "adversarial" / sha256[:2] / f"{sha256}.png"


class RunStore:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.run_dir / "store.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(pieces)")}
        for column, declaration in ADDED_PIECE_COLUMNS.items():
            if column not in have:
                self._db.execute(f"ALTER TABLE pieces ADD COLUMN {column} {declaration}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction, committed whole or not at all. On a full disk SQLite may already have rolled it back
        itself: rolling back again would hide the real error under 'no transaction is active'."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()

    # -- meta
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- images
    def adversarial_path(self, sha256: str) -> Path:
        return adversarial_image_path(self.run_dir, sha256)

    def save_adversarial_pngs(self, pngs: dict[str, bytes]) -> None:
        """A piece's new images, each renamed into place whole, then made durable with one flush of the file
        system, before the piece's row is committed: an fsync per image cost more than the rest of the piece."""
        for sha256, png in pngs.items():
            path = self.adversarial_path(sha256)
            try:
                whole = path.stat().st_size == len(png)
            except FileNotFoundError:
                whole = False
            if not whole:  # new, or cut short by a power cut before an earlier try of this piece was flushed
                write_atomically(path, png, durable=False)
        if pngs:  # also files an earlier try renamed into place but never flushed (it was killed)
            sync_filesystem(self.run_dir)

    # -- pieces
    def finished_piece_ids(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT piece_id FROM pieces")}

    def _insert_piece(self, piece: PieceRecord) -> None:
        row = asdict(piece)
        columns = ", ".join(row)
        self._db.execute(
            f"INSERT OR REPLACE INTO pieces ({columns}) VALUES ({', '.join('?' for _ in row)})", tuple(row.values())
        )

    def record_attack_piece(self, piece: PieceRecord, images: Iterable[AdversarialRecord]) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO adversarial VALUES (?, ?, ?, ?, ?, ?)",
                [(r.submission_id, r.image_id, r.sha256, r.epsilon, int(r.failed), r.clipped_pixels) for r in images],
            )
            self._insert_piece(piece)

    def record_defense_piece(self, piece: PieceRecord, labels: dict[str, int | None]) -> None:
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO labels VALUES (?, ?, ?)",
                [(piece.submission_id, sha, label) for sha, label in labels.items()],
            )
            self._insert_piece(piece)

    def save_defense_plan(self, pieces: Iterable[tuple[str, str, tuple[str, ...]]]) -> None:
        """(piece id, defense id, image hashes) of newly planned defense pieces, fixed from then on; an image a
        defense already has in a piece is left out of a new one (a stored piece never moves).

        Each distinct set of images is stored once, shared by every piece holding it: defenses planned together
        hold the same images, so a run stores a few sets of its distinct images instead of a row per (defense,
        image), 50 million rows at the NIPS 2017 final's size. (Run folders from before keep their rows in
        `defense_plan`, read as they are.)"""
        planned: dict[str, set[str]] = {}
        for defense, hashes in self.defense_plan().values():
            planned.setdefault(defense, set()).update(hashes)
        rows, sets = [], {}
        for piece_id, defense, hashes in pieces:
            have = planned.setdefault(defense, set())
            kept = tuple(sorted(sha for sha in hashes if sha not in have))
            if not kept:
                continue
            have.update(kept)
            set_id = hashlib.sha256("\n".join(kept).encode()).hexdigest()[:32]
            sets[set_id] = kept
            rows.append((piece_id, defense, set_id))
        with self._transaction():
            for set_id, kept in sets.items():
                if self._db.execute("SELECT 1 FROM image_sets WHERE set_id = ? LIMIT 1", (set_id,)).fetchone():
                    continue
                self._db.executemany("INSERT INTO image_sets VALUES (?, ?)", ((set_id, sha) for sha in kept))
            self._db.executemany("INSERT OR IGNORE INTO defense_pieces VALUES (?, ?, ?)", rows)

    def defense_plan(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """{piece id: (defense id, sorted image hashes)} of every defense piece planned in this run folder; pieces
        holding the same images share one tuple."""
        legacy: dict[str, tuple[str, list[str]]] = {}
        query = "SELECT piece_id, defense_id, sha256 FROM defense_plan ORDER BY piece_id, sha256"
        for piece_id, defense, sha in self._db.execute(query):
            legacy.setdefault(piece_id, (defense, []))[1].append(sha)
        plan = {piece_id: (defense, tuple(hashes)) for piece_id, (defense, hashes) in legacy.items()}
        sets: dict[str, tuple[str, ...]] = {}
        for piece_id, defense, set_id in self._db.execute("SELECT * FROM defense_pieces").fetchall():
            if set_id not in sets:
                query = "SELECT sha256 FROM image_sets WHERE set_id = ? ORDER BY sha256"
                sets[set_id] = tuple(row[0] for row in self._db.execute(query, (set_id,)))
            plan[piece_id] = (defense, sets[set_id])
        return dict(sorted(plan.items()))

    # -- reads, for scoring and reports
    def pieces(self) -> list[PieceRecord]:
        cursor = self._db.execute("SELECT * FROM pieces ORDER BY piece_id")
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        # SQLite keeps booleans as 0/1: give them back as the record declares them.
        return [
            PieceRecord(**{**row, "timed_out": bool(row["timed_out"]), "oom_killed": bool(row["oom_killed"])})
            for row in rows
        ]

    def adversarial(self, image_ids: Sequence[str] | None = None) -> list[AdversarialRecord]:
        """Every stored image of every attack; of the images `image_ids` only, when given (the report's gallery)."""
        if image_ids is None:
            rows = self._db.execute("SELECT * FROM adversarial ORDER BY submission_id, image_id").fetchall()
        else:
            rows = sorted(_rows_where_in(self._db, "SELECT * FROM adversarial WHERE image_id {}", image_ids))
        return [AdversarialRecord(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]

    def distinct_hashes(self, attack_ids: Sequence[str] | None = None) -> list[str]:
        """The distinct stored images, sorted; of the attacks `attack_ids` only, when given."""
        if attack_ids is None:
            rows = self._db.execute("SELECT DISTINCT sha256 FROM adversarial ORDER BY sha256")
        else:
            marks = ",".join("?" * len(attack_ids))
            query = f"SELECT DISTINCT sha256 FROM adversarial WHERE submission_id IN ({marks}) ORDER BY sha256"
            rows = self._db.execute(query, tuple(attack_ids))
        return [row[0] for row in rows]

    def labels(self, shas: Sequence[str] | None = None) -> dict[tuple[str, str], int | None]:
        """{(defense, image hash): label} of every classified image; of the images `shas` only, when given. A whole
        competition's labels are defenses x distinct images: `labels_of` reads them one defense at a time."""
        if shas is None:
            return {(d, s): label for d, s, label in self._db.execute("SELECT defense_id, sha256, label FROM labels")}
        query = "SELECT defense_id, sha256, label FROM labels WHERE sha256 {}"
        return {(d, s): label for d, s, label in _rows_where_in(self._db, query, shas)}

    def labels_of(self, defense_id: str) -> Iterator[tuple[str, int | None]]:
        """(image hash, label) of every image one defense classified, streamed."""
        yield from self._db.execute("SELECT sha256, label FROM labels WHERE defense_id = ?", (defense_id,))

    # -- submissions: what ran under each id, so that a changed submission is noticed and re-run
    def submission_digests(self) -> dict[str, tuple[str, str, str]]:
        """{id: (kind, sha256, added)} of every submission that has taken part in this run folder."""
        rows = self._db.execute("SELECT submission_id, kind, sha256, added FROM submissions").fetchall()
        return {row[0]: (row[1], row[2], row[3]) for row in rows}

    def record_submission(self, submission_id: str, kind: str, sha256: str, added: str) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO submissions VALUES (?, ?, ?, ?)", (submission_id, kind, sha256, added)
            )

    def drop_submission(self, submission_id: str) -> int:
        """Forgets every result of one submission (a resubmission runs again); returns the pieces dropped.

        Its adversarial images' PNG files stay (other attacks may have written the same bytes); labels that
        defenses gave them stay too, keyed by content, and are simply never looked up again.
        """
        with self._transaction():
            dropped = self._db.execute("DELETE FROM pieces WHERE submission_id = ?", (submission_id,)).rowcount
            self._db.execute("DELETE FROM adversarial WHERE submission_id = ?", (submission_id,))
            self._db.execute("DELETE FROM labels WHERE defense_id = ?", (submission_id,))
            self._db.execute("DELETE FROM defense_plan WHERE defense_id = ?", (submission_id,))
            self._db.execute("DELETE FROM defense_pieces WHERE defense_id = ?", (submission_id,))
            self._db.execute("DELETE FROM image_sets WHERE set_id NOT IN (SELECT set_id FROM defense_pieces)")
            self._db.execute("DELETE FROM submissions WHERE submission_id = ?", (submission_id,))
        return dropped

    def meta_json(self, key: str) -> object:
        value = self.get_meta(key)
        return json.loads(value) if value is not None else None
