"""Canary weights as replica counts: every replicas 1..20 x weight 0..100."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from slotkeeper.checks.canary import actual_weight, replicas_for_weight

REPLICAS = range(1, 21)
WEIGHTS = range(0, 101)


def share(stable: int, candidate: int) -> Fraction:
    return Fraction(candidate, stable + candidate)


@pytest.mark.parametrize("replicas, weight, expected", [
    (2, 20, (2, 1)),   # the candidate gets a pod; the stable slot keeps 2: 33 %
    (10, 20, (10, 3)),  # 3 / 13 = 23.1 % beats 2 / 12 = 16.7 %: the stable slot stays at 10
    (10, 10, (10, 1)),
    (10, 50, (10, 10)),
    (10, 80, (3, 10)),  # 10 / 13 = 76.9 % beats 10 / 12 = 83.3 %
    (4, 75, (1, 4)),   # 4 / 5 = 80 % beats 4 / 6 = 67 %
    (1, 1, (1, 1)),
    (1, 99, (1, 1)),
    (3, 0, (3, 0)),
    (3, 100, (0, 3)),
])
def test_examples(replicas, weight, expected):
    assert replicas_for_weight(replicas, weight) == expected


def test_status_reports_the_weight_the_pods_give_not_the_asked_one():
    stable, candidate = replicas_for_weight(2, 20)
    assert actual_weight(stable, candidate) == 33


@pytest.mark.parametrize("replicas", REPLICAS)
def test_invariants_for_every_weight(replicas):
    for weight in WEIGHTS:
        stable, candidate = replicas_for_weight(replicas, weight)
        case = f"replicas={replicas} weight={weight} -> ({stable}, {candidate})"

        assert (candidate == 0) == (weight == 0), case  # any positive weight gives the candidate a pod
        assert (stable == 0) == (weight == 100), case
        if 0 < weight < 100:
            # never fewer pods than in steady state (no pod carries more), never more than blue/green runs
            assert replicas + 1 <= stable + candidate <= 2 * replicas, case
            assert max(stable, candidate) == replicas, case
            if weight <= 50:
                assert stable == replicas, case  # the revert target keeps its full size
        else:
            assert stable + candidate == replicas, case

        # what status reports is what the replica counts give, rounded half up
        assert actual_weight(stable, candidate) == math.floor(100 * share(stable, candidate) + Fraction(1, 2)), case

        # the error is bounded: one pod among at least replicas + 1
        assert abs(100 * share(stable, candidate) - weight) <= Fraction(100, replicas + 1), case


@pytest.mark.parametrize("replicas", REPLICAS)
def test_the_weight_is_the_closest_the_rule_allows(replicas):
    # every count the rule allows: the larger slot at full size, the other from 1 to replicas
    options = [(replicas, c) for c in range(1, replicas + 1)] + [(s, replicas) for s in range(1, replicas + 1)]
    for weight in range(1, 100):
        stable, candidate = replicas_for_weight(replicas, weight)
        best = min(abs(share(s, c) - Fraction(weight, 100)) for s, c in options)
        assert abs(share(stable, candidate) - Fraction(weight, 100)) == best, f"replicas={replicas} weight={weight}"


@pytest.mark.parametrize("stable, candidate, percent", [
    (0, 0, 0), (3, 0, 0), (0, 3, 100), (2, 1, 33), (1, 2, 67), (7, 1, 13), (1, 1, 50), (199, 1, 1),
])
def test_actual_weight_rounds_half_up(stable, candidate, percent):
    assert actual_weight(stable, candidate) == percent


def test_replicas_must_be_positive():
    with pytest.raises(ValueError):
        replicas_for_weight(0, 20)


def test_zero_replicas_are_refused_with_the_number_given():
    with pytest.raises(ValueError, match="^replicas must be at least 1, got 0$"):
        replicas_for_weight(0, 50)


def test_a_tie_between_two_stable_sizes_keeps_the_larger():
    # 3 candidate pods at weight 55: 2 stable pods give 60 %, 3 give 50 %, equally far; more stable pods win.
    assert replicas_for_weight(3, 55) == (3, 3)
