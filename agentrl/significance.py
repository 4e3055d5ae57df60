"""Is one arm better than another over a few seeds? Welch's t-test, and the report's one-line verdict.

A comparison has a handful of seeds per arm (3 by default). Welch's unequal-variance t-test (Welch 1947)
is the test Colas et al. (2018, "How many random seeds?") recommend for comparing RL algorithms over few
seeds: it does not assume the two arms spread equally, and at n = 3 it only calls a difference
significant when it is large against the spread of the seeds. It does assume each arm's per-seed
values are roughly normal; with 3 seeds that cannot be checked, which the verdict's "n = 3" says.

The p-value needs Student's t distribution: ``t_sf2`` is its two-sided tail from the regularised
incomplete beta function, ``I_x(a, b)`` with ``x = df / (df + t^2)``, ``a = df / 2``, ``b = 1 / 2``,
evaluated by its continued fraction (modified Lentz). No torch, no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ALPHA = 0.05
TEST_NAME = "Welch's t-test"


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of ``I_x(a, b)`` (converges fast for ``x < (a + 1) / (a + b + 2)``)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def regularized_beta(x: float, a: float, b: float) -> float:
    """``I_x(a, b)``, the regularised incomplete beta function, for ``0 <= x <= 1`` and ``a, b > 0``."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x: expected a number in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(1.0 - x, b, a) / b


def t_sf2(t: float, df: float) -> float:
    """The two-sided tail ``P(|T| >= |t|)`` of Student's t with ``df > 0`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df: expected a number > 0, got {df}")
    return regularized_beta(df / (df + t * t), df / 2.0, 0.5)


@dataclass(frozen=True)
class WelchResult:
    """Welch's t-test of two samples: the difference of means (a - b), t, its degrees of freedom, p."""

    diff: float
    t: float
    df: float
    p: float


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> WelchResult | None:
    """Welch's two-sided t-test of ``mean(a) == mean(b)``; None when a side has fewer than 2 values or
    neither side varies (no spread to judge the difference by)."""
    if len(a) < 2 or len(b) < 2:
        return None
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)  # variance of the mean
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    if va + vb <= 1e-24:
        return None
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return WelchResult(diff=ma - mb, t=t, df=df, p=t_sf2(t, df))


def verdict(name_a: str, a: Sequence[float], name_b: str, b: Sequence[float], *, what: str,
            alpha: float = ALPHA) -> str:
    """One line on whether arm ``a`` differs from arm ``b`` in ``what`` (their per-seed values), the
    test named and the sample sizes given."""
    n = f"n = {len(a)}" if len(a) == len(b) else f"n = {len(a)} and {len(b)}"
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    means = f"{name_a} {ma:.3f} against {name_b} {mb:.3f}"
    result = welch_t_test(a, b)
    if result is None:
        if len(a) < 2 or len(b) < 2:
            return f"**{name_a} against {name_b}**: no test at {n} ({means}); run 2 or more seeds per arm."
        same = "the same" if ma == mb else "different"
        return (f"**{name_a} against {name_b}**: every seed of each arm gave {same} {what} ({means}); "
                f"with no spread there is no {TEST_NAME}.")
    test = f"{TEST_NAME} p = {result.p:.3g}"
    if result.p < alpha:
        higher = name_a if result.diff > 0 else name_b
        return (f"**{name_a} against {name_b}**: {higher} has the higher {what}, significant at {n} "
                f"({means}; {test} < {alpha}).")
    return (f"**{name_a} against {name_b}**: no significant difference in {what} at {n} ({means}; "
            f"{test} >= {alpha}).")


def verdicts(per_arm: Mapping[str, Sequence[float]], *, what: str) -> list[str]:
    """The first arm against each other arm, one verdict line each."""
    arms = list(per_arm.items())
    if len(arms) < 2:
        return []
    (first, values), rest = arms[0], arms[1:]
    return [verdict(first, values, name, other, what=what) for name, other in rest]
