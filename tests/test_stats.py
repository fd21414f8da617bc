"""analysis.stats against values obtained another way: closed forms of the incomplete beta function and of
Student's t for 1 and 2 degrees of freedom, mpmath's arbitrary-precision incomplete beta, Simpson's rule on the
t density, printed t tables, a Welch test worked by hand, and Holm's adjustment worked by hand."""
import math

import mpmath
import pytest

from analysis.stats import holm, regularized_incomplete_beta, student_t_cdf, two_sided_p, welch


def t_density(x: float, df: float) -> float:
    return math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi) * \
        (1 + x * x / df) ** (-(df + 1) / 2)


def simpson_two_sided(t: float, df: float, intervals: int = 4000) -> float:
    """P(|T| ≥ |t|) = 1 − 2∫_0^|t| f(x) dx, the integral by Simpson's rule."""
    h = abs(t) / intervals
    total = t_density(0, df) + t_density(abs(t), df)
    total += sum((4 if k % 2 else 2) * t_density(k * h, df) for k in range(1, intervals))
    return 1 - 2 * total * h / 3


@pytest.mark.parametrize("x", [0.01, 0.3, 0.5, 0.77, 0.999])
def test_incomplete_beta_closed_forms(x):
    for a in (0.5, 1.0, 3.7):
        assert regularized_incomplete_beta(a, 1.0, x) == pytest.approx(x ** a, rel=1e-12)     # ∫ a t^(a−1)
        assert regularized_incomplete_beta(1.0, a, x) == pytest.approx(1 - (1 - x) ** a, rel=1e-12)
    assert regularized_incomplete_beta(2.0, 2.0, x) == pytest.approx(3 * x ** 2 - 2 * x ** 3, rel=1e-12)  # ∫ 6t(1−t)
    assert regularized_incomplete_beta(0.5, 0.5, x) == pytest.approx(2 / math.pi * math.asin(math.sqrt(x)), rel=1e-12)


@pytest.mark.parametrize("a,b,x", [(0.35, 0.5, 0.2), (2.374, 0.5, 0.9), (15.0, 0.5, 0.98), (50.0, 0.5, 0.6),
                                   (0.5, 40.0, 0.01), (120.0, 80.0, 0.61), (3.0, 7.0, 0.3)])
def test_incomplete_beta_against_mpmath(a, b, x):
    want = float(mpmath.betainc(a, b, 0, x, regularized=True))
    assert regularized_incomplete_beta(a, b, x) == pytest.approx(want, rel=1e-11, abs=1e-300)


@pytest.mark.parametrize("t", [-30.0, -2.5, -0.4, 0.0, 0.4, 1.0, 7.0])
def test_t_cdf_closed_forms_for_one_and_two_degrees_of_freedom(t):
    assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-12)        # Cauchy
    assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-12)


@pytest.mark.parametrize("t,df", [(0.3, 0.7), (2.0, 0.7), (1.1, 4.749414519906323), (2.0, 13.3), (5.0, 13.3),
                                  (3.2, 100.5)])
def test_two_sided_p_against_simpson_on_the_density(t, df):
    assert two_sided_p(t, df) == pytest.approx(simpson_two_sided(t, df), rel=1e-8, abs=1e-12)
    # the lower tail against the same independent integral (student_t_cdf is built on two_sided_p, so comparing the
    # two with each other would test nothing)
    assert student_t_cdf(-t, df) == pytest.approx(simpson_two_sided(t, df) / 2, rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("t,df,p", [(12.706, 1, 0.05), (4.303, 2, 0.05), (2.228, 10, 0.05), (2.042, 30, 0.05),
                                    (4.032, 5, 0.01), (1.833, 9, 0.10), (3.169, 10, 0.01)])
def test_two_sided_p_at_printed_critical_values(t, df, p):
    """Critical values of Student's t as printed in tables (three decimals)."""
    assert two_sided_p(t, df) == pytest.approx(p, abs=2e-4)


def test_welch_worked_by_hand():
    """a = 1…5: mean 3, s² = 10/4, s²/n = 1/2; b = 3, 5, 7, 9: mean 6, s² = 20/3, s²/n = 5/3.
    t = −3 / sqrt(13/6); df = (13/6)² / ((1/2)²/4 + (5/3)²/3) = (169/36)·(432/427) = 2028/427."""
    result = welch([1, 2, 3, 4, 5], [3, 5, 7, 9])
    assert result.t == pytest.approx(-3 / math.sqrt(13 / 6), rel=1e-14)
    assert result.df == pytest.approx(2028 / 427, rel=1e-14)
    assert result.p == pytest.approx(simpson_two_sided(result.t, 2028 / 427), rel=1e-8)
    assert 0.05 < result.p < 0.15
    same = welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])        # equal variances and sizes: Student's df = 2n − 2
    assert same.df == pytest.approx(4.0) and same.t == pytest.approx(-3 / math.sqrt(2 / 3))
    assert welch([4.0, 5.0, 6.0], [1.0, 2.0, 3.0]).p == pytest.approx(same.p)


def test_welch_degenerate_samples():
    with pytest.raises(ValueError, match="at least two values"):
        welch([3.0], [1.0, 2.0])
    assert welch([1.0, 1.0], [2.0, 2.0]).p == 0.0 and welch([1.0, 1.0], [1.0, 1.0]).p == 1.0


def test_holm_worked_by_hand():
    """p = 0.01, 0.04, 0.03, 0.005 (m = 4), sorted 0.005, 0.01, 0.03, 0.04: × 4, 3, 2, 1 = 0.02, 0.03, 0.06,
    0.04, made non-decreasing: 0.02, 0.03, 0.06, 0.06. None (no test) is skipped and not counted."""
    assert holm([0.01, 0.04, None, 0.03, 0.005]) == pytest.approx([0.03, 0.06, None, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == [] and holm([None]) == [None]
