"""Scores with NIPS 2017 semantics, computed from the run store only.

correct[a, d]: images of attack a that defense d labels with TrueLabel; hit[t, d]: images of targeted attack t
that d labels with TargetClass. A missing or invalid label is wrong (and never a hit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox.dataset import DataSet
from sandbox.store import RunStore


@dataclass(frozen=True)
class Classification:
    attack_id: str
    targeted: bool
    defense_id: str
    image_id: str
    predicted: int | None
    true_label: int
    target_class: int


@dataclass
class Scores:
    n_images: int
    attacks: list[str]
    targeted_attacks: list[str]
    defenses: list[str]
    correct: dict[str, dict[str, int]] = field(default_factory=dict)  # attack or targeted -> defense -> count
    hits: dict[str, dict[str, int]] = field(default_factory=dict)  # targeted -> defense -> count
    classifications: list[Classification] = field(default_factory=list)

    def defense_scores(self) -> dict[str, int]:
        return {d: sum(self.correct[a][d] for a in self.attacks + self.targeted_attacks) for d in self.defenses}

    def attack_scores(self) -> dict[str, int]:
        return {a: sum(self.n_images - self.correct[a][d] for d in self.defenses) for a in self.attacks}

    def targeted_attack_scores(self) -> dict[str, int]:
        return {t: sum(self.hits[t][d] for d in self.defenses) for t in self.targeted_attacks}

    def normalised(self) -> dict[str, dict[str, float]]:
        """Each score over its maximum, in 0..1."""

        def ratio(value: int, total: int) -> float:
            return round(value / total, 6) if total else 0.0

        n_attacks = len(self.attacks) + len(self.targeted_attacks)
        per_defense = self.n_images * len(self.defenses)
        return {
            "defense": {d: ratio(s, self.n_images * n_attacks) for d, s in self.defense_scores().items()},
            "attack": {a: ratio(s, per_defense) for a, s in self.attack_scores().items()},
            "targeted_attack": {t: ratio(s, per_defense) for t, s in self.targeted_attack_scores().items()},
        }


def ranking(scores: dict[str, int]) -> list[tuple[str, int]]:
    """Highest score first; ties by id, so the order is stable."""
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def places(ranked: list[tuple[str, int]] | list[list]) -> list[int]:
    """The place of each row of a ranking, equal scores sharing one (1, 1, 3): ties are not broken by the id
    order, which only keeps the listing stable."""
    result: list[int] = []
    for index, (_, score) in enumerate(ranked):
        result.append(result[-1] if index and score == ranked[index - 1][1] else index + 1)
    return result


def compute_scores(
    store: RunStore, dataset: DataSet, attacks: list[str], targeted_attacks: list[str], defenses: list[str]
) -> Scores:
    """Counts every (attack, defense) pair over every image of the data set. An image an attack failed is stored
    as the clean image (so defenses classify that); a missing or invalid label counts as wrong, and so does an image
    with nothing stored yet (a partial run's unfinished piece): a partial run's scores are not final."""
    labels = store.labels()
    by_attack: dict[str, dict[str, str]] = {}
    for row in store.adversarial():
        by_attack.setdefault(row.submission_id, {})[row.image_id] = row.sha256
    scores = Scores(len(dataset.records), sorted(attacks), sorted(targeted_attacks), sorted(defenses))
    for targeted, attack_ids in ((False, scores.attacks), (True, scores.targeted_attacks)):
        for attack_id in attack_ids:
            images = by_attack.get(attack_id, {})
            scores.correct[attack_id] = {d: 0 for d in scores.defenses}
            if targeted:
                scores.hits[attack_id] = {d: 0 for d in scores.defenses}
            for defense_id in scores.defenses:
                for record in dataset.records:
                    sha = images.get(record.image_id)
                    predicted = labels.get((defense_id, sha)) if sha else None
                    if predicted == record.true_label:
                        scores.correct[attack_id][defense_id] += 1
                    if targeted and predicted == record.target_class:
                        scores.hits[attack_id][defense_id] += 1
                    scores.classifications.append(
                        Classification(
                            attack_id,
                            targeted,
                            defense_id,
                            record.image_id,
                            predicted,
                            record.true_label,
                            record.target_class,
                        )
                    )
    return scores
