"""Organizer intake: folders of received submissions of all three types, as organizers receive them.

Each entry (a folder, `.zip`, `.tar.gz` or saved image `.tar`) is admitted by `submission.admit` (the same rules
as `sandbox validate`) and sorted by the type its metadata.json names. An optional `submissions.csv` beside the
entries (`id,name,team`) gives display names and teams; ids stay the entries' names.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from sandbox.errors import SubmissionError
from sandbox.store import RunStore
from sandbox.submission import (
    LeftOut,
    SubmissionSet,
    SubmissionType,
    admit,
    duplicate_id,
    load_submissions,
    submission_entries,
    submission_id,
)

ROSTER = "submissions.csv"
KINDS = ("attack", "targeted_attack", "defense")


@dataclass(frozen=True)
class RosterEntry:
    name: str | None
    team: str | None


def read_roster(folder: Path) -> dict[str, RosterEntry]:
    """`submissions.csv` in a folder of received submissions: {id: (name, team)}; absent means no names."""
    path = folder / ROSTER
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if "id" not in (reader.fieldnames or []):
                raise SubmissionError(path, "no 'id' column", "write a header line `id,name,team`")
            return {
                row["id"].strip(): RosterEntry(
                    (row.get("name") or "").strip() or None, (row.get("team") or "").strip() or None
                )
                for row in reader
                if (row.get("id") or "").strip()
            }
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SubmissionError(path, f"not a readable CSV ({exc})", "save it as UTF-8 `id,name,team` lines") from None


def load_received(folders: list[Path], unpack_dir: Path, taken: dict[str, str]) -> dict[str, SubmissionSet]:
    """Admits every entry of the given folders and sorts it by type; refused ones are left out with a reason.

    `taken` maps the ids already loaded in this run to their kind: an id used twice is refused the second time.
    """
    sets = {kind: SubmissionSet() for kind in KINDS}
    refused = sets["attack"].left_out  # entries refused before their type is known are listed with the attacks
    for folder in map(Path, folders):
        if not folder.is_dir():
            refused.append(LeftOut(folder.name, folder, f"{folder}: no such folder of received submissions"))
            continue
        roster = read_roster(folder)
        for entry in submission_entries(folder):
            sub_id = submission_id(entry)
            duplicate = duplicate_id(entry, taken, None)
            if duplicate is not None:
                refused.append(duplicate)
                continue
            admission = admit(entry, unpack_dir)
            kind = admission.type or "attack"
            taken[sub_id] = kind
            if admission.submission is None:
                sets[kind].left_out.append(LeftOut(sub_id, entry, str(admission.refusal())))
                continue
            listed = roster.get(sub_id, RosterEntry(None, None))
            sets[kind].submissions.append(replace(admission.submission, name=listed.name, team=listed.team))
    return sets


def gather(
    per_kind: dict[SubmissionType, list[Path]], received: list[Path], unpack_dir: Path
) -> dict[str, SubmissionSet]:
    """Every submission of the run: the per-type folders first, then the folders of received ones."""
    taken: dict[str, str] = {}
    sets: dict[str, SubmissionSet] = {
        kind: load_submissions(folders, kind, unpack_dir / kind, taken) for kind, folders in per_kind.items()
    }
    for kind, found in load_received(received, unpack_dir / "received", taken).items():
        sets[kind].submissions += found.submissions
        sets[kind].left_out += found.left_out
    return sets


def exclude(sets: dict[str, SubmissionSet], ids: Iterable[str]) -> list[str]:
    """Takes the given ids out of the run (neither run nor scored, and an excluded attack's images are not given to
    the defenses; their stored results are kept, so taking them back in costs at most the defense pieces for
    images not classified yet). Returns the ids that were found."""
    wanted, found = set(ids), []
    for subs in sets.values():
        found += [s.id for s in subs.submissions if s.id in wanted]
        subs.submissions = [s for s in subs.submissions if s.id not in wanted]
    return sorted(found)


def track_versions(store: RunStore, sets: dict[str, SubmissionSet], now: str) -> tuple[dict[str, str], list[str]]:
    """Records each submission's digest in the run folder. One whose digest changed since it last ran (a
    resubmission under the same id) has its results dropped, so it runs again.

    Returns ({id: when it was added to this run folder}, the ids whose results were dropped).
    """
    known = store.submission_digests()
    added, changed = {}, []
    for kind, subs in sets.items():
        for s in subs.submissions:
            before = known.get(s.id)
            if before is not None and before[1] != s.sha256:
                store.drop_submission(s.id)
                changed.append(s.id)
                before = None
            if before is None:
                store.record_submission(s.id, kind, s.sha256, now)
            added[s.id] = before[2] if before else now
    return added, changed
