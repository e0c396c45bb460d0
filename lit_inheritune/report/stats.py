"""The test behind every verdict on our side of a claim: Student's t, two-sided, p < 0.05.

scipy is not a dependency of the package (it only arrives with some installs of lm-eval), so the t distribution
is computed here: its two-sided tail is a regularized incomplete beta function, evaluated by the continued
fraction of Numerical Recipes (Press et al., 3rd ed., section 6.4), accurate to ~1e-12 for the df seen here.

Which test a comparison gets depends on what was measured:
- both sides with the same seeds (at least 2): paired t-test on the per-seed differences, since a seed fixes the
  training batches (data/datamodule.py), so the runs of one seed share them;
- both sides with 2+ values otherwise: Welch's t-test (unequal variances, Welch-Satterthwaite df);
- one side measured once (the single reference): one-sample t-test of the other side against that value, which
  treats the single run as exact: its own seed-to-seed variance is not counted (it is unknown until it has a
  second seed);
- one value on both sides: no test is possible.
"""

from __future__ import annotations

import math
import statistics

ALPHA = 0.05
_EPS = 1e-15
_TINY = 1e-300


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x={x} is outside [0, 1]")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # the fraction converges fast only for x below the mean a / (a + b); above it, use I_x(a,b) = 1 - I_1-x(b,a)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom (df need not be an integer: Welch's is not)."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def _result(test: str, mean_diff: float, std_err: float, df: float) -> dict:
    if std_err == 0.0:  # every value identical on its side: no spread to test against
        t = 0.0 if mean_diff == 0.0 else math.copysign(math.inf, mean_diff)
    else:
        t = mean_diff / std_err
    return {"test": test, "t": t, "df": df, "p": t_two_sided_p(t, df)}


def welch(a: list[float], b: list[float]) -> dict:
    """Welch's t-test of mean(a) - mean(b) (each side at least 2 values)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se2 = va + vb
    df = se2 ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se2 > 0 else len(a) + len(b) - 2.0
    return _result("Welch's t-test", statistics.fmean(a) - statistics.fmean(b), math.sqrt(se2), df)


def paired(a: list[float], b: list[float]) -> dict:
    """Paired t-test of a - b, element by element (the same seed on both sides)."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    return _result("paired t-test by seed", statistics.fmean(diffs),
                   statistics.stdev(diffs) / math.sqrt(len(diffs)), len(diffs) - 1.0)


def one_sample(a: list[float], value: float) -> dict:
    """One-sample t-test of mean(a) - value (a side measured once, taken as exact)."""
    return _result("one-sample t-test against the single run", statistics.fmean(a) - value,
                   statistics.stdev(a) / math.sqrt(len(a)), len(a) - 1.0)


def compare(lhs: list[float], rhs: list[float], lhs_seeds: list | None = None,
            rhs_seeds: list | None = None) -> dict | None:
    """The test that fits what was measured (module docstring) for mean(lhs) - mean(rhs); None when no test is
    possible (a side empty, or one value on each side). Seeds are given in the values' order."""
    if not lhs or not rhs or (len(lhs) == 1 and len(rhs) == 1):
        return None
    if len(lhs) == 1:
        result = one_sample(rhs, lhs[0])
        return {**result, "t": -result["t"]}
    if len(rhs) == 1:
        return one_sample(lhs, rhs[0])
    if (lhs_seeds and rhs_seeds and len(lhs_seeds) == len(lhs) and len(rhs_seeds) == len(rhs)
            and None not in lhs_seeds and None not in rhs_seeds and len(set(lhs_seeds)) == len(lhs_seeds)
            and sorted(lhs_seeds) == sorted(rhs_seeds)):
        by_seed = dict(zip(rhs_seeds, rhs))
        return paired(lhs, [by_seed[s] for s in lhs_seeds])
    return welch(lhs, rhs)
