"""Work pieces as plain frozen data: batching and the epsilon schedule.

Piece ids are stable for a given set of submissions, data set and options, which is what lets a run folder be
resumed: a piece whose id is recorded as finished is not run again.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sandbox.errors import SandboxError


@dataclass(frozen=True)
class AttackPiece:
    """One attack (or targeted attack) on one or more data set batches that share an epsilon."""

    piece_id: str
    submission_id: str
    targeted: bool
    batch_indexes: tuple[int, ...]
    image_ids: tuple[str, ...]
    epsilon: int
    seed: int


@dataclass(frozen=True)
class DefensePiece:
    """One defense on one batch of distinct adversarial images, named by the SHA-256 of their pixels."""

    piece_id: str
    submission_id: str
    image_hashes: tuple[str, ...]
    seed: int


def parse_epsilons(text: str | int | Sequence[int]) -> tuple[int, ...]:
    """`16` or `4,8,12,16`; each an integer L-inf budget in pixel units 0..255."""
    if isinstance(text, int):
        values = [text]
    elif isinstance(text, str):
        try:
            values = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise SandboxError(
                f"epsilon '{text}'", "not an integer", "use an integer or a list like 4,8,12,16"
            ) from None
    else:
        values = [int(value) for value in text]
    if not values or any(not 0 <= value <= 255 for value in values):
        raise SandboxError(f"epsilon '{text}'", "out of range", "every epsilon must be an integer in 0..255")
    return tuple(values)


def piece_seed(run_seed: int, piece_id: str) -> int:
    """A 31-bit seed derived from the run's seed and the piece: the same on every resume."""
    digest = hashlib.sha256(f"{run_seed}:{piece_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def batches(items: Sequence[str], size: int) -> list[tuple[str, ...]]:
    if size < 1:
        raise ValueError("batch size must be at least 1")
    return [tuple(items[start : start + size]) for start in range(0, len(items), size)]


def plan_attack_pieces(
    attack_ids: Sequence[str],
    targeted_ids: Sequence[str],
    image_ids: Sequence[str],
    batch_size: int,
    epsilons: Sequence[int],
    run_seed: int,
    piece_size: int = 1000,
) -> list[AttackPiece]:
    """Every attack on every batch; batch `i` gets `epsilons[i % len(epsilons)]` for all attacks, as in 2017.

    Batches that share an epsilon run in one container up to `piece_size` images: the attack's start-up (importing
    a framework, loading weights) is then paid once per piece, not once per batch.
    """
    image_batches = batches(image_ids, batch_size)
    by_epsilon: dict[int, list[int]] = {}
    for index in range(len(image_batches)):
        by_epsilon.setdefault(int(epsilons[index % len(epsilons)]), []).append(index)
    groups: list[tuple[int, list[int]]] = []
    for epsilon, indexes in by_epsilon.items():
        current: list[int] = []
        for index in indexes:
            if current and sum(len(image_batches[i]) for i in current) + len(image_batches[index]) > piece_size:
                groups.append((epsilon, current))
                current = []
            current.append(index)
        groups.append((epsilon, current))
    pieces = []
    for targeted, ids in ((False, attack_ids), (True, targeted_ids)):
        for sub_id in ids:
            for epsilon, indexes in groups:
                piece_id = f"{'targeted_attack' if targeted else 'attack'}/{sub_id}/{indexes[0]:05d}-e{epsilon}"
                images = tuple(image for i in indexes for image in image_batches[i])
                seed = piece_seed(run_seed, piece_id)
                pieces.append(AttackPiece(piece_id, sub_id, targeted, tuple(indexes), images, epsilon, seed))
    return pieces


def defense_piece_count(n_images: int, n_defenses: int, workers: int, max_piece_images: int) -> int:
    """As few pieces as keep every worker busy: each piece pays the defense's start-up (a framework import,
    loading weights) once, whatever its size. More only where a piece would exceed `max_piece_images` (which bounds
    the work a kill loses and the piece's time limit)."""
    if n_images == 0:
        return 0
    for_workers = math.ceil(workers / max(1, n_defenses))
    return min(n_images, max(for_workers, math.ceil(n_images / max_piece_images)))


def plan_defense_pieces(
    defense_ids: Sequence[str],
    image_hashes: Sequence[str],
    workers: int,
    max_piece_images: int,
    run_seed: int,
    planned: Mapping[str, set[str]] | None = None,
) -> list[DefensePiece]:
    """Every defense on the distinct images it has no piece for yet, in even chunks of the sorted hashes.

    `planned` maps a defense to the images already in its stored pieces: a resume (with any --jobs) or images
    added later never move an image from one piece to another, so a finished piece stays finished. The id names
    the chunk's content.
    """
    planned = planned or {}
    pieces = []
    for sub_id in defense_ids:
        todo = sorted(set(image_hashes) - planned.get(sub_id, set()))
        count = defense_piece_count(len(todo), len(defense_ids), workers, max_piece_images)
        for index in range(count):
            chunk = tuple(todo[index * len(todo) // count : (index + 1) * len(todo) // count])
            content = hashlib.sha256("".join(chunk).encode()).hexdigest()[:12]
            piece_id = f"defense/{sub_id}/{content}"
            pieces.append(DefensePiece(piece_id, sub_id, chunk, piece_seed(run_seed, piece_id)))
    return pieces
