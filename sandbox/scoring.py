"""Scores with NIPS 2017 semantics, computed from the run store only.

correct[a, d]: images of attack a that defense d labels with TrueLabel; hit[t, d]: images of targeted attack t
that d labels with TargetClass. A missing or invalid label is wrong (and never a hit).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import NamedTuple

import numpy as np

from sandbox.dataset import DataSet
from sandbox.store import RunStore

MISSING = -1  # the predicted label of an image with no valid label: none stored yet, or an invalid one


class Classification(NamedTuple):
    """One row of all_classification.csv (a tuple: the NIPS 2017 final has 83 million)."""

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
    # (attack, defense) -> each image's predicted label in data set order, MISSING where there is none: one small
    # array per pair, where a list of objects per classification took 40 GB for the NIPS 2017 final's 83 million.
    predicted: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    image_ids: tuple[str, ...] = ()
    true_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    target_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))

    def classification_rows(self) -> Iterator[tuple]:
        """Every classification as a plain tuple in `Classification`'s order of fields: attack by attack
        (untargeted ones first), defense by defense, images in data set order. Tuples made by zip, since
        all_classification.csv takes 83 million of them at the NIPS 2017 final's size."""
        true_labels, targets = self.true_labels.tolist(), self.target_classes.tolist()
        for targeted, attack_ids in ((False, self.attacks), (True, self.targeted_attacks)):
            for attack_id in attack_ids:
                for defense_id in self.defenses:
                    labels = self.predicted[attack_id, defense_id].tolist()
                    predicted = [None if label == MISSING else label for label in labels]
                    same = (repeat(attack_id), repeat(targeted), repeat(defense_id))
                    yield from zip(
                        *same, self.image_ids, predicted, true_labels, targets, strict=False
                    )  # repeat: endless

    def classifications(self) -> Iterator[Classification]:
        """`classification_rows`, with names."""
        return map(Classification._make, self.classification_rows())

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
    with nothing stored yet (a partial run's unfinished piece): a partial run's scores are not final.

    Labels are read one defense at a time, as an array over the distinct images, and each attack's images are
    looked up in it at once: memory grows with attacks x images, not with attacks x defenses x images."""
    scores = Scores(len(dataset.records), sorted(attacks), sorted(targeted_attacks), sorted(defenses))
    scores.image_ids = tuple(record.image_id for record in dataset.records)
    scores.true_labels = np.array([record.true_label for record in dataset.records], dtype=np.int32)
    scores.target_classes = np.array([record.target_class for record in dataset.records], dtype=np.int32)
    position = {image_id: k for k, image_id in enumerate(scores.image_ids)}
    all_attacks = scores.attacks + scores.targeted_attacks
    # Each attack's image at each data set position, as an index into the distinct images; none stored: -1.
    distinct: dict[str, int] = {}
    images = {attack_id: np.full(scores.n_images, -1, dtype=np.int64) for attack_id in all_attacks}
    for row in store.adversarial():
        if row.submission_id in images and row.image_id in position:
            images[row.submission_id][position[row.image_id]] = distinct.setdefault(row.sha256, len(distinct))
    for index in images.values():
        index[index < 0] = len(distinct)  # the slot past the last distinct image: never labelled
    for attack_id in all_attacks:
        scores.correct[attack_id] = {}
    for attack_id in scores.targeted_attacks:
        scores.hits[attack_id] = {}
    for defense_id in scores.defenses:
        labels = np.full(len(distinct) + 1, MISSING, dtype=np.int32)
        for sha, label in store.labels_of(defense_id):
            slot = distinct.get(sha)
            if slot is not None and label is not None:
                labels[slot] = label
        for attack_id in all_attacks:
            predicted = labels[images[attack_id]]
            scores.predicted[attack_id, defense_id] = predicted
            scores.correct[attack_id][defense_id] = int((predicted == scores.true_labels).sum())
            if attack_id in scores.hits:
                scores.hits[attack_id][defense_id] = int((predicted == scores.target_classes).sum())
    return scores
