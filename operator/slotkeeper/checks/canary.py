"""Canary weights as replica counts. Pure.

During a canary step the endpoint Service selects both slots and traffic follows the ready pods
(kube-proxy spreads connections evenly over endpoints), so a weight can only be approximated by
replica counts. The rule of :func:`replicas_for_weight`, for ``replicas`` R and a weight w in percent:

- w = 0: (stable R, candidate 0). w = 100: (stable 0, candidate R).
- 0 < w <= 50: the stable slot keeps its full R (a revert falls back on it at full size) and the
  candidate gets the c in 1..R whose share c / (R + c) is closest to w (a tie goes to fewer candidate
  pods: less traffic on the unproven revision).
- 50 < w < 100: the candidate gets R and the stable slot the s in 1..R whose share leaves the
  candidate closest to w (a tie goes to more stable pods). Keeping the stable slot at R here would take
  up to 99 R candidate pods.

So a weight above 0 always gives the candidate a pod, a weight below 100 always leaves the stable slot
one, and the weight is the closest one these counts allow: with R = 2, setWeight 20 gives
(2, 1), which is 33 %; with R = 1 any weight strictly between 0 and 100 is 50 %. The total is between
R + 1 and 2 R: never fewer pods than R, so no pod carries more than it does in steady state (each slot
always has at least the pods its share needs), and never more than blue/green runs during analysis.

``status.traffic`` must report :func:`actual_weight` of the ready pods, never the asked weight.
"""

from __future__ import annotations

from fractions import Fraction


def replicas_for_weight(replicas: int, weight: int) -> tuple[int, int]:
    """(stable_replicas, candidate_replicas) approximating ``weight`` percent for the candidate."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    if weight <= 0:
        return replicas, 0
    if weight >= 100:
        return 0, replicas
    wanted = Fraction(weight, 100)
    if weight <= 50:
        candidate = min(range(1, replicas + 1), key=lambda c: (abs(Fraction(c, replicas + c) - wanted), c))
        return replicas, candidate
    stable = min(range(1, replicas + 1), key=lambda s: (abs(Fraction(replicas, s + replicas) - wanted), -s))
    return stable, replicas


def actual_weight(stable_ready: int, candidate_ready: int) -> int:
    """The candidate's share of traffic in percent, from ready pods, rounded half up; 0 without pods."""
    total = stable_ready + candidate_ready
    if total <= 0:
        return 0
    return (200 * candidate_ready + total) // (2 * total)
