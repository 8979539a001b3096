"""The statistics the experiments report, on top of ``scipy.stats``.

Success is counted in episodes, so two arms are compared with Fisher's exact test (valid at 30
episodes a side, where a normal approximation is not) and a few seeds with a Student-t interval.
"""
from __future__ import annotations

import math
from typing import Sequence

from scipy import stats


def fisher_exact_p(wins_a: int, episodes_a: int, wins_b: int, episodes_b: int) -> float:
    """Two-sided Fisher exact p value that two success counts share one rate (1.0 if a side is empty)."""
    for wins, episodes in ((wins_a, episodes_a), (wins_b, episodes_b)):
        if episodes < 0 or not 0 <= wins <= episodes:
            raise ValueError(f"fisher_exact_p: need 0 <= wins ({wins}) <= episodes ({episodes})")
    table = [[wins_a, episodes_a - wins_a], [wins_b, episodes_b - wins_b]]
    return float(stats.fisher_exact(table, alternative="two-sided").pvalue)


def sign_test_p(gained: int, lost: int) -> float:
    """Exact two-sided p that paired episodes flip either way alike (1.0 when none flipped)."""
    if gained < 0 or lost < 0:
        raise ValueError(f"sign_test_p: counts must be >= 0, got {gained} and {lost}")
    return float(stats.binomtest(gained, gained + lost).pvalue) if gained + lost else 1.0


def t_interval(values: Sequence[float], confidence: float = 0.95) -> list[float] | None:
    """Student-t interval of the mean of ``values`` (None for fewer than 2 values)."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    if sd == 0:
        return [mean, mean]  # scipy refuses a zero scale; the interval of identical values is a point
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return [float(low), float(high)]


def episodes_for_power(rate: float, gain_points: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """Episodes per side that a two-sided ``alpha`` test needs to see ``gain_points`` from ``rate``.

    The normal approximation for two proportions (no continuity correction): a start and an end
    evaluation of this many episodes each, pooled over seeds, detect a true gain of that size
    with probability ``power``. It sizes an experiment; the verdict is still the exact test.
    """
    after = rate + gain_points / 100.0
    if not (0 < rate < 1 and 0 < after < 1 and 0 < power < 1 and 0 < alpha < 1):
        raise ValueError(f"episodes_for_power: need 0 < rate ({rate}) and rate + gain ({after}) < 1, "
                         f"0 < power ({power}) < 1, 0 < alpha ({alpha}) < 1")
    z_alpha, z_power = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    mean = (rate + after) / 2
    spread = (z_alpha * math.sqrt(2 * mean * (1 - mean))
              + z_power * math.sqrt(rate * (1 - rate) + after * (1 - after)))
    return math.ceil((spread / (after - rate)) ** 2)


def wilson(wins: int, episodes: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a success rate (0, 1 for no episodes)."""
    if episodes <= 0:
        return 0.0, 1.0
    z = stats.norm.ppf(0.5 + confidence / 2)
    rate = wins / episodes
    centre = (rate + z * z / (2 * episodes)) / (1 + z * z / episodes)
    spread = math.sqrt(rate * (1 - rate) / episodes + z * z / (4 * episodes * episodes))
    half = z * spread / (1 + z * z / episodes)
    return centre - half, centre + half


def gain_interval(wins_start: int, episodes_start: int, wins_end: int, episodes_end: int,
                  confidence: float = 0.95) -> list[float]:
    """Newcombe's hybrid score interval of end rate minus start rate, in points.

    It treats the two evaluations as independent samples; the start and end of a run evaluate the
    same held-out episodes, whose outcomes correlate positively, so the true paired interval is
    narrower: this one is conservative.
    """
    p1, p2 = wins_end / episodes_end, wins_start / episodes_start
    l1, u1 = wilson(wins_end, episodes_end, confidence)
    l2, u2 = wilson(wins_start, episodes_start, confidence)
    diff = p1 - p2
    low = diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = diff + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return [round(100 * low, 2), round(100 * high, 2)]
