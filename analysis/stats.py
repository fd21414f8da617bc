"""Small-sample statistics for comparing configurations over seeds, in plain Python (no scipy).

    regularized_incomplete_beta(a, b, x)   I_x(a, b), by its continued fraction (modified Lentz)
    student_t_cdf(t, df)                   P(T ≤ t) for Student's t with df > 0 degrees of freedom (any real df)
    welch(a, b)                            Welch's unequal-variance t-test: t, Welch–Satterthwaite df, two-sided p
    holm(p_values)                         Holm's step-down adjustment for multiple comparisons

Why Welch: the configurations of a study differ in their seed-to-seed spread (softmax's validation loss
varies far less over seeds than TDA's), so the pooled-variance t-test's equal-variance assumption does not
hold. Why Holm: a screening compares many configurations against one reference; Holm controls the
family-wise error rate like Bonferroni and is uniformly more powerful, with no assumption on the tests'
dependence.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

_EPS = 1e-15      # relative precision of the continued fraction
_TINY = 1e-300    # keeps Lentz's denominators away from 0
_MAX_TERMS = 10_000


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) · B(a, b) / (x^a (1−x)^b / a), evaluated by the modified
    Lentz method; converges fast for x < (a + 1) / (a + b + 2)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_TERMS):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            step = d * c
            h *= step
        if abs(step - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if a <= 0 or b <= 0:
        raise ValueError(f"a and b must be > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b   # I_x(a,b) = 1 − I_{1−x}(b,a)


def two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def student_t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t distribution with ``df`` > 0 degrees of freedom (not necessarily an integer),
    through P(|T| > |t|) = I_{df/(df+t²)}(df/2, 1/2)."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    tail = 0.5 * two_sided_p(t, df)
    return 1.0 - tail if t > 0 else tail


@dataclass(frozen=True)
class Welch:
    """Welch's t-test of mean(a) − mean(b): statistic t, Welch–Satterthwaite degrees of freedom df, two-sided p."""

    t: float
    df: float
    p: float


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's two-sample t-test (unequal variances) of H0: equal means, two-sided.

    t = (ā − b̄) / sqrt(s_a²/n_a + s_b²/n_b) with sample variances (n − 1 in the denominator);
    df = (s_a²/n_a + s_b²/n_b)² / ((s_a²/n_a)²/(n_a − 1) + (s_b²/n_b)²/(n_b − 1)).
    Needs at least two values in each sample; ValueError otherwise. When both samples have zero variance the
    test is undefined: p is 0 for different means and 1 for equal ones, t ±inf or nan, df nan."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's test needs at least two values per sample, got {len(a)} and {len(b)}")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0.0:
        return Welch(math.copysign(math.inf, diff) if diff else math.nan, math.nan, 0.0 if diff else 1.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return Welch(t, df, two_sided_p(t, df))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the input's order; None entries (no test) stay None and do
    not count among the m tests. With the m p-values sorted ascending, p_(1) ≤ … ≤ p_(m), the adjusted value
    of the k-th is max over j ≤ k of min(1, (m − j + 1)·p_(j)); reject at level α where adjusted ≤ α."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(tested)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
