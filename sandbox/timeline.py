"""Where a run's time went, from the store's piece records: per submission and per worker.

An organizer needs to see idle workers and slow submissions at a glance: results.json gets each submission's
time profile, report.html a timeline of pieces per worker (plain SVG, no script).
"""

from __future__ import annotations

from sandbox.store import PieceRecord


def time_profile(pieces: list[PieceRecord]) -> dict[str, dict]:
    """Per submission: time in its containers, and its start-up vs per-image time where pieces of different sizes
    let a line `wall = start-up + images x per-image` be fitted (else start-up is unknown: null)."""
    by_submission: dict[str, list[PieceRecord]] = {}
    for piece in pieces:
        by_submission.setdefault(piece.submission_id, []).append(piece)
    profile = {}
    for submission_id, own in sorted(by_submission.items()):
        ok = [p for p in own if p.status == "ok" and p.n_images > 0]
        images = sum(p.n_images for p in own)
        wall = sum(p.wall_s for p in own)
        startup, per_image = _fit([(p.n_images, p.wall_s) for p in ok])
        profile[submission_id] = {
            "pieces": len(own),
            "images": images,
            "container_s": round(wall, 3),
            "sandbox_s": round(sum(p.total_s - p.wall_s for p in own), 3),
            "startup_s": None if startup is None else round(startup, 3),
            "s_per_image": round(per_image, 5) if per_image is not None else None,
        }
    return profile


def _fit(points: list[tuple[int, float]]) -> tuple[float | None, float | None]:
    """Least squares over (images, seconds); with one piece size only the mean seconds per image is known."""
    if not points:
        return None, None
    sizes = {n for n, _ in points}
    if len(sizes) < 2:
        return None, sum(w for _, w in points) / sum(n for n, _ in points)
    mean_n = sum(n for n, _ in points) / len(points)
    mean_w = sum(w for _, w in points) / len(points)
    slope = sum((n - mean_n) * (w - mean_w) for n, w in points) / sum((n - mean_n) ** 2 for n, _ in points)
    intercept = mean_w - slope * mean_n
    if slope < 0 or intercept < 0:  # noise beats the signal: say only what is sure
        return None, sum(w for _, w in points) / sum(n for n, _ in points)
    return intercept, slope


def worker_timeline(pieces: list[PieceRecord]) -> dict:
    """Pieces laid out per worker, in seconds from the run's first piece; idle share per worker.

    Pieces from before a resume are shown where they ran; pieces recorded without times (older run folders)
    are left out.
    """
    timed = [p for p in pieces if p.ended_at > p.started_at > 0]
    if not timed:
        return {"workers": [], "bars": [], "span_s": 0.0, "idle_share": None}
    origin = min(p.started_at for p in timed)
    workers = sorted({p.worker for p in timed})
    span = max(p.ended_at for p in timed) - origin
    bars = [
        {
            "worker": workers.index(p.worker),
            "start": round(p.started_at - origin, 3),
            "length": round(p.ended_at - p.started_at, 3),
            "container": round(p.wall_s, 3),
            "kind": p.kind,
            "status": p.status,
            "piece_id": p.piece_id,
            "images": p.n_images,
        }
        for p in sorted(timed, key=lambda p: p.started_at)
    ]
    busy = sum(p.ended_at - p.started_at for p in timed)
    idle = 1 - busy / (span * len(workers)) if span > 0 else 0.0
    return {"workers": workers, "bars": bars, "span_s": round(span, 3), "idle_share": round(max(0.0, idle), 3)}
