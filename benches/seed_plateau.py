#!/usr/bin/env python3
"""Reference implementations of dlib's plateau counts, for agreement tests and timing.

  seed_plateau.py count FILE... [--p 0.51] [--quantile 0.1] [--impl exact|seed]
  seed_plateau.py time FILE [--runs 5] [--impl exact|seed]

--impl seed (default): the seed's straightforward approach: for every suffix of the loss
  list, fit a least-squares line to it from scratch (numpy), O(n^2) per check.
--impl exact: dlib's running_gradient (recursive least squares, 1e6 prior) in one
  backward pass, written term by term like dlib's matrix expressions, so its doubles are
  bit-identical to dlib's (and to `trainer plateau`).
Output of `count` is, per file, `trainer plateau`'s two lines: steps_without_decrease=N
robust=M, then losses=K.
"""
import argparse
import math
import re
import statistics
import sys
import time

SQRT2 = math.sqrt(2.0)


def read_losses(path):
    with open(path) as f:
        return [float(t) for t in re.split(r"[,\s]+", f.read()) if t]


def normal_cdf(value, mean, stddev):
    if stddev == 0:
        return 0.0 if value < mean else (1.0 if value > mean else 0.5)
    z = (value - mean) / stddev
    return 0.5 * math.erfc(-z / SQRT2)


def std_round(x):
    """C's round(): halves away from zero (Python's round() rounds halves to even)."""
    f = math.floor(x)
    return int(f) + (1 if x - f >= 0.5 else 0)


def upper_quantile(values, quantile):
    idx = std_round((len(values) - 1) * (1 - quantile))
    return sorted(values, key=lambda v: (math.isnan(v), v))[min(idx, len(values) - 1)]


class RunningGradient:
    def __init__(self):
        self.n = 0.0
        self.r = [1e6, 0.0, 0.0, 1e6]
        self.w = [0.0, 0.0]
        self.rss = 0.0

    def add(self, y):
        n = self.n
        r00, r01, r10, r11 = self.r
        xr0 = n * r00 + r10
        xr1 = n * r01 + r11
        temp = 1.0 + (xr0 * n + xr1)
        t0 = r00 * n + r01
        t1 = r10 * n + r11
        a00 = r00 - t0 * t0 / temp
        a01 = r01 - t0 * t1 / temp
        a10 = r10 - t1 * t0 / temp
        a11 = r11 - t1 * t1 / temp
        r = [0.5 * (a00 + a00), 0.5 * (a01 + a10), 0.5 * (a10 + a01), 0.5 * (a11 + a11)]
        err = y - (n * self.w[0] + self.w[1])
        w = [self.w[0] + (r[0] * n + r[1]) * err, self.w[1] + (r[2] * n + r[3]) * err]
        post = y - (n * w[0] + w[1])
        self.rss += post * post * temp
        self.r, self.w, self.n = r, w, n + 1.0

    def prob_greater_than_zero(self):
        n = self.n
        se = math.sqrt(self.rss / (n - 2.0) * (12.0 / (n * n * n - n)))
        return 1.0 - normal_cdf(0.0, self.w[0], se)


def count_exact(losses, p, keep_at_most=None):
    g, count = RunningGradient(), 0
    for j, y in enumerate(reversed(losses), 1):
        if keep_at_most is None or y <= keep_at_most:
            g.add(y)
        if g.n > 2 and g.prob_greater_than_zero() < p:
            count = j
    return count


def prob_decreasing_ols(np, y):
    """P(slope > 0) of an ordinary least-squares line through y at x = 0, 1, ..."""
    k = len(y)
    x = np.arange(k, dtype=np.float64)
    xc = x - x.mean()
    sxx = (xc * xc).sum()
    slope = (xc * (y - y.mean())).sum() / sxx
    resid = y - (y.mean() + slope * xc)
    se = math.sqrt((resid * resid).sum() / (k - 2) * (12.0 / (float(k) ** 3 - k)))
    return 1.0 - normal_cdf(0.0, float(slope), se)


def count_seed(losses, p, keep_at_most=None):
    """For each suffix (newest first), refit a line to the values kept so far."""
    import numpy as np
    rev = np.array(losses[::-1], dtype=np.float64)
    kept = np.ones(len(rev), bool) if keep_at_most is None else rev <= keep_at_most
    fitted = np.cumsum(kept)
    count = 0
    for j in range(1, len(rev) + 1):
        m = int(fitted[j - 1])
        if m > 2 and prob_decreasing_ols(np, rev[:j][kept[:j]]) < p:
            count = j
    return count


def counts(losses, p, quantile, impl):
    count = count_exact if impl == "exact" else count_seed
    plain = count(losses, p)
    robust = count(losses, p, upper_quantile(losses, quantile)) if losses else 0
    return plain, robust


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["count", "time"])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--p", type=float, default=0.51)
    ap.add_argument("--quantile", type=float, default=0.1)
    ap.add_argument("--impl", choices=["exact", "seed"], default="seed")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    if a.mode == "count":
        for f in a.files:
            losses = read_losses(f)
            plain, robust = counts(losses, a.p, a.quantile, a.impl)
            print(f"steps_without_decrease={plain} robust={robust}")
            print(f"losses={len(losses)}")
        return
    losses = read_losses(a.files[0])
    # One check = what dlib's trainer does when the plain count reaches the threshold:
    # the plain count plus the robust count.
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        counts(losses, a.p, a.quantile, a.impl)
        times.append(time.perf_counter() - t0)
    print(f"python_{a.impl} n={len(losses)} runs={a.runs} median_s={statistics.median(times):.6f}")


if __name__ == "__main__":
    sys.exit(main())
