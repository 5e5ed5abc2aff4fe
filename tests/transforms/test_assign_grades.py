"""AssignGrades: frequency ranks -> distinct grade labels by weighted draws without replacement."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from monai_disc.transforms import AssignGrades, AssignGradesd, assign_grades

RANKS = np.array([[0, 0, 1], [2, 0, 1]], dtype=np.int64)  # three ranks


def _exact_marginals(weights, num_ranks):
    """P(rank r gets label l) for sequential weighted draws without replacement, by enumeration."""
    w = np.asarray(weights, dtype=np.float64)
    out = np.zeros((num_ranks, w.size))
    for seq in itertools.permutations(range(w.size), num_ranks):
        p, used = 1.0, 0.0
        for label in seq:
            p *= w[label] / (1.0 - used)
            used += w[label]
        for r, label in enumerate(seq):
            out[r, label] += p
    return out


def test_fixed_weights_are_honoured_over_many_draws():
    weights = (0.7, 0.2, 0.1, 0.0)
    transform = AssignGrades(labels=(0, 1, 2, 3), weights=weights).set_random_state(seed=0)
    draws = np.array([transform(RANKS)[[0, 0, 1], [0, 2, 0]] for _ in range(4000)])  # grade of ranks 0, 1, 2
    assert not np.any(draws == 3)  # weight 0 is never drawn
    assert all(len(set(row)) == 3 for row in draws.tolist())
    expected = _exact_marginals(weights, 3)
    for r in range(3):
        observed = np.bincount(draws[:, r], minlength=4) / len(draws)
        np.testing.assert_allclose(observed, expected[r], atol=0.03)
    assert expected[0, 0] == pytest.approx(0.7) and expected[1, 1] == pytest.approx(0.7 * 2 / 3 + 0.1 * 0.2 / 0.9)


def test_dirichlet_weights_draw_only_allowed_distinct_labels_uniformly_for_rank_zero():
    rng = np.random.RandomState(1)
    draws = np.array([assign_grades(2, rng, labels=(1, 2, 3)) for _ in range(3000)])
    assert set(np.unique(draws)) == {1, 2, 3}
    assert np.all(draws[:, 0] != draws[:, 1])
    np.testing.assert_allclose(np.bincount(draws[:, 0], minlength=4)[1:] / 3000, [1 / 3] * 3, atol=0.03)


def test_small_concentration_still_gives_distinct_grades():
    rng = np.random.default_rng(0)
    for _ in range(200):
        grades = assign_grades(4, rng, concentration=0.01)
        assert sorted(grades.tolist()) == [0, 1, 2, 3]


def test_seeded_transforms_repeat_and_different_seeds_differ():
    def run(seed):
        t = AssignGrades().set_random_state(seed=seed)
        return [t(RANKS).tolist() for _ in range(20)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_more_ranks_than_labels_is_an_error():
    with pytest.raises(ValueError, match="3 ranks need distinct grades but only 2 labels"):
        AssignGrades(labels=(1, 2))(RANKS)
    with pytest.raises(ValueError, match="positive weight"):
        assign_grades(4, np.random.RandomState(0), weights=(0.7, 0.2, 0.1, 0.0))


def test_output_keeps_array_type_dtype_and_rank_structure():
    ranks = torch.tensor([[[0, 1], [1, 1]]], dtype=torch.uint8)
    out = AssignGrades(weights=(0, 0, 1, 1)).set_random_state(seed=3)(ranks)
    assert out.dtype == torch.uint8 and out.shape == ranks.shape
    assert out[0, 0, 0] != out[0, 1, 1] and out[0, 0, 1] == out[0, 1, 1]
    assert set(out.unique().tolist()) == {2, 3}


def test_dict_version_shares_one_draw_across_keys_and_records_it():
    a = MetaTensor(torch.tensor([[[0, 1], [2, 2]]]), meta={"filename_or_obj": "a.png"})
    b = torch.tensor([[[2, 0]]])
    t = AssignGradesd(["a", "b"], grades_key="grades").set_random_state(seed=11)
    out = t({"a": a, "b": b})
    grades = out["grades"]
    assert sorted(set(grades.tolist())) == sorted(grades.tolist()) and len(grades) == 3
    np.testing.assert_array_equal(out["a"].numpy(), grades[a.numpy()])
    np.testing.assert_array_equal(out["b"].numpy(), grades[b.numpy()])
    assert isinstance(out["a"], MetaTensor) and out["a"].meta["filename_or_obj"] == "a.png"


def test_compose_seeding_reaches_the_dict_version():
    def run():
        pipeline = Compose([AssignGradesd("m", grades_key="g")]).set_random_state(seed=5)
        return [pipeline({"m": RANKS})["g"].tolist() for _ in range(10)]

    assert run() == run()
