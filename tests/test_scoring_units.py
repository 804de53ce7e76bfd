"""Scores (SPEC 5, NIPS 2017 semantics) on small hand-built stores, every number worked out by hand below."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.dataset import load_dataset
from sandbox.scoring import Scores, compute_scores, ranking
from sandbox.store import RunStore
from tests.stores import record_attack, record_defense, write_dataset

# ImageId, TrueLabel, TargetClass
ROWS = [("i0", 0, 1), ("i1", 1, 2), ("i2", 2, 0), ("i3", 0, 2)]
CLEAN = {"i0": "c0", "i1": "c1", "i2": "c2", "i3": "c3"}  # each image's hash, standing for its pixels


@pytest.fixture
def store(tmp_path: Path):
    store = RunStore(tmp_path / "run")
    yield store
    store.close()


@pytest.fixture
def dataset(tmp_path: Path):
    return load_dataset(write_dataset(tmp_path / "data", ROWS))


def _competition(store: RunStore) -> None:
    """Two attacks, one targeted attack, two defenses; labels keyed by image hash, as a defense piece stores them.

    Per (attack, defense), image by image (TrueLabel / TargetClass -> label given):
      noop   x good: i0 0->0 ok, i1 1->1 ok, i2 2->2 ok, i3 0->0 ok                 correct 4
      noop   x weak: i0 0->0 ok, i1 1->None, i2 2->1, i3 0->(never labelled)       correct 1
      strong x good: p0 0->0 ok, p1 1->2, c2 2->2 ok, p3 0->0 ok                    correct 3
      strong x weak: p0 0->1, p1 1->1 ok, c2 2->1, p3 0->2                          correct 1
      tgt    x good: t0 0/1->1 hit, t1 1/2->1 ok, t2 2/0->2 ok, c3 0/2->0 ok        correct 3, hits 1
      tgt    x weak: t0 0/1->1 hit, t1 1/2->2 hit, t2 2/0->0 hit, c3 0/2->missing   correct 0, hits 3
    """
    record_attack(store, "noop", CLEAN)
    record_attack(store, "strong", {"i0": "p0", "i1": "p1", "i2": "c2", "i3": "p3"})
    record_attack(store, "tgt", {"i0": "t0", "i1": "t1", "i2": "t2", "i3": "c3"}, targeted=True)
    good = {"c0": 0, "c1": 1, "c2": 2, "c3": 0, "p0": 0, "p1": 2, "p3": 0, "t0": 1, "t1": 1, "t2": 2}
    record_defense(store, "good", good)
    weak = {"c0": 0, "c1": None, "c2": 1, "p0": 1, "p1": 1, "p3": 2, "t0": 1, "t1": 2, "t2": 0}
    record_defense(store, "weak", weak)


def _scores(store, dataset) -> Scores:
    # Given out of order: scores list every kind sorted by id.
    return compute_scores(store, dataset, ["strong", "noop"], ["tgt"], ["weak", "good"])


def test_matrices_count_correct_labels_and_target_hits(store, dataset):
    _competition(store)
    scores = _scores(store, dataset)
    assert (scores.n_images, scores.attacks, scores.targeted_attacks, scores.defenses) == (
        4,
        ["noop", "strong"],
        ["tgt"],
        ["good", "weak"],
    )
    assert scores.correct == {
        "noop": {"good": 4, "weak": 1},
        "strong": {"good": 3, "weak": 1},
        "tgt": {"good": 3, "weak": 0},
    }
    assert scores.hits == {"tgt": {"good": 1, "weak": 3}}


def test_scores_follow_nips_2017(store, dataset):
    _competition(store)
    scores = _scores(store, dataset)
    # defense: correct summed over attacks and targeted attacks
    assert scores.defense_scores() == {"good": 4 + 3 + 3, "weak": 1 + 1 + 0}
    # attack: N - correct, summed over defenses
    assert scores.attack_scores() == {"noop": (4 - 4) + (4 - 1), "strong": (4 - 3) + (4 - 1)}
    # targeted attack: hits summed over defenses; a targeted attack never adds to the (untargeted) attack scores
    assert scores.targeted_attack_scores() == {"tgt": 1 + 3}


def test_normalised_scores_divide_by_the_largest_possible(store, dataset):
    _competition(store)
    assert _scores(store, dataset).normalised() == {
        "defense": {"good": round(10 / 12, 6), "weak": round(2 / 12, 6)},  # N x (2 attacks + 1 targeted)
        "attack": {"noop": 3 / 8, "strong": 4 / 8},  # N x 2 defenses
        "targeted_attack": {"tgt": 4 / 8},
    }


def test_normalised_scores_without_opponents_are_zero_not_a_division_error(store, dataset):
    record_attack(store, "noop", CLEAN)
    alone = compute_scores(store, dataset, ["noop"], [], [])
    assert alone.attack_scores() == {"noop": 0}
    assert alone.normalised() == {"defense": {}, "attack": {"noop": 0.0}, "targeted_attack": {}}
    record_defense(store, "good", {"c0": 0})
    no_attacks = compute_scores(store, dataset, [], [], ["good"])
    assert no_attacks.normalised()["defense"] == {"good": 0.0}


def test_every_classification_is_listed_with_missing_labels_as_none(store, dataset):
    _competition(store)
    rows = list(_scores(store, dataset).classifications())
    assert len(rows) == 3 * 2 * 4  # (attacks + targeted) x defenses x images
    by_key = {(c.attack_id, c.defense_id, c.image_id): c for c in rows}
    weak_i3 = by_key[("noop", "weak", "i3")]
    assert (weak_i3.predicted, weak_i3.true_label, weak_i3.target_class, weak_i3.targeted) == (None, 0, 2, False)
    assert by_key[("noop", "weak", "i1")].predicted is None  # stored as invalid
    assert by_key[("tgt", "weak", "i2")].targeted and by_key[("tgt", "weak", "i2")].predicted == 0
    # Attack by attack, defense by defense, images in data set order.
    assert [(c.attack_id, c.defense_id, c.image_id) for c in rows[:5]] == [
        ("noop", "good", "i0"),
        ("noop", "good", "i1"),
        ("noop", "good", "i2"),
        ("noop", "good", "i3"),
        ("noop", "weak", "i0"),
    ]


def test_a_failed_attack_piece_scores_as_its_clean_images(store, dataset):
    """A piece that crashed stores the clean image for every image it did not write (SPEC 4.3): the attack then
    scores exactly what the no-op attack scores, no more."""
    record_attack(store, "noop", CLEAN)
    record_attack(store, "crash", CLEAN, failed=frozenset(CLEAN), status="failed", exit_code=3, failed_images=4)
    record_defense(store, "good", {"c0": 0, "c1": 1, "c2": 0, "c3": 0})
    scores = compute_scores(store, dataset, ["noop", "crash"], [], ["good"])
    assert scores.correct == {"crash": {"good": 3}, "noop": {"good": 3}}
    assert scores.attack_scores() == {"crash": 1, "noop": 1}


def test_a_failed_defense_piece_answers_wrong_on_every_image(store, dataset):
    record_attack(store, "noop", CLEAN)
    record_attack(store, "tgt", {"i0": "t0", "i1": "c1", "i2": "c2", "i3": "c3"}, targeted=True)
    record_defense(store, "good", {"c0": 0, "c1": 1, "c2": 2, "c3": 0, "t0": 1})
    # Its container crashed: no result.csv, so every label it owed is missing.
    record_defense(store, "crashed", dict.fromkeys(["c0", "c1", "c2", "c3", "t0"]), status="failed", exit_code=1)
    scores = compute_scores(store, dataset, ["noop"], ["tgt"], ["good", "crashed"])
    assert scores.defense_scores() == {"crashed": 0, "good": 4 + 3}
    assert scores.attack_scores() == {"noop": 0 + 4}  # the crashed defense's every image counts for the attack
    assert scores.hits == {"tgt": {"crashed": 0, "good": 1}}  # a missing label is never a hit


def test_submissions_outside_the_given_lists_are_not_scored(store, dataset):
    _competition(store)
    record_attack(store, "left_out", {"i0": "p0"})
    scores = compute_scores(store, dataset, ["noop"], [], ["good"])
    assert scores.correct == {"noop": {"good": 4}}
    assert scores.defense_scores() == {"good": 4}  # neither strong, tgt nor left_out count, nor weak's labels


def test_ranking_is_highest_first_and_ties_go_by_id():
    assert ranking({"b": 3, "c": 5, "a": 3, "d": 0}) == [("c", 5), ("a", 3), ("b", 3), ("d", 0)]
    assert ranking({}) == []


def test_ranking_of_hand_scores(store, dataset):
    _competition(store)
    scores = _scores(store, dataset)
    assert ranking(scores.defense_scores()) == [("good", 10), ("weak", 2)]
    assert ranking(scores.attack_scores()) == [("strong", 4), ("noop", 3)]
