#!/usr/bin/env python3
"""insightface's verification protocol in NumPy, written in the manner of its
verification.py (a loop over thresholds, one accuracy per threshold), as the twin of
src/verification.rs.

  insightface_verification.py EMB.npy ISSAME.npy [--libraries]

EMB: (2n, d) embedding(image) + embedding(flipped image), not normalised; rows 2i and
2i+1 are pair i. ISSAME: (n,) bool or 0/1. Prints one JSON object: the pair distances,
the folds, per-fold accuracy and threshold, their mean and std, and TAR at FAR = 1e-3
(null where insightface would divide by zero).

By default everything is NumPy. --libraries uses what insightface calls instead:
sklearn.preprocessing.normalize, sklearn's KFold and scipy's interp1d(kind='slinear'),
which only accepts the FAR curve's repeated values in SciPy <= 1.8.
"""
import json
import sys

import numpy as np

FOLDS = 10
FAR_TARGET = 1e-3


def normalize_rows(x):
    """sklearn.preprocessing.normalize(x): divide each row by its L2 norm; zero rows stay."""
    norms = np.sqrt(np.sum(x * x, axis=1))
    norms[norms == 0.0] = 1.0
    return x / norms[:, np.newaxis]


def folds(n):
    """KFold(n_splits=10, shuffle=False): contiguous test folds, the first n % 10 longer."""
    if n < FOLDS:
        raise ValueError('%d pairs are too few for %d folds' % (n, FOLDS))
    sizes = np.full(FOLDS, n // FOLDS, dtype=np.int64)
    sizes[:n % FOLDS] += 1
    indices = np.arange(n)
    start = 0
    for size in sizes:
        test = indices[start:start + size]
        train = np.concatenate((indices[:start], indices[start + size:]))
        yield train, test
        start += size


def slinear(x, y, at):
    """interp1d(x, y, kind='slinear')(at) as SciPy <= 1.8 computes it for non-decreasing x:
    degree-1 B-spline on knots [x0, x..., xn], de Boor's recursion in x[p-1] <= at < x[p]."""
    p = int(np.searchsorted(x, at, side='right'))
    p = min(max(p, 1), len(x) - 1)
    lo, hi = x[p - 1], x[p]
    if hi == lo:
        return 0.0
    w = 1.0 / (hi - lo)
    h0 = 0.0 + w * (hi - at)
    h1 = w * (at - lo)
    return (0.0 + y[p - 1] * h0) + y[p] * h1


def accuracy(threshold, dist, same):
    accept = np.less(dist, threshold)
    true_accepts = np.sum(np.logical_and(accept, same))
    true_rejects = np.sum(np.logical_and(np.logical_not(accept), np.logical_not(same)))
    return float(true_accepts + true_rejects) / dist.size


def tar_far(threshold, dist, same):
    accept = np.less(dist, threshold)
    true_accepts = np.sum(np.logical_and(accept, same))
    false_accepts = np.sum(np.logical_and(accept, np.logical_not(same)))
    return float(true_accepts) / float(np.sum(same)), float(false_accepts) / float(np.sum(np.logical_not(same)))


def roc_accuracy(dist, same, splits):
    thresholds = np.arange(0, 4, 0.01)
    fold_accuracy, fold_threshold = [], []
    for train, test in splits:
        train_accuracy = np.array([accuracy(t, dist[train], same[train]) for t in thresholds])
        best = int(np.argmax(train_accuracy))
        fold_accuracy.append(accuracy(thresholds[best], dist[test], same[test]))
        fold_threshold.append(float(thresholds[best]))
    return np.array(fold_accuracy), fold_threshold


def tar_at_far(dist, same, splits, interpolate):
    thresholds = np.arange(0, 4, 0.001)
    tars, fars, chosen = [], [], []
    for train, test in splits:
        if any(np.sum(s[i]) == 0 for s in (same, ~same) for i in (train, test)):
            return None  # insightface's calculate_val would divide by zero
        far_train = np.array([tar_far(t, dist[train], same[train])[1] for t in thresholds])
        threshold = interpolate(far_train, thresholds, FAR_TARGET) if np.max(far_train) >= FAR_TARGET else 0.0
        tar, far = tar_far(threshold, dist[test], same[test])
        tars.append(tar)
        fars.append(far)
        chosen.append(float(threshold))
    tars, fars = np.array(tars), np.array(fars)
    return {'fold_tar': tars.tolist(), 'fold_far': fars.tolist(), 'fold_threshold': chosen,
            'tar_mean': float(np.mean(tars)), 'tar_std': float(np.std(tars)), 'far_mean': float(np.mean(fars))}


def evaluate(embeddings, issame, libraries=False):
    same = np.asarray(issame).astype(bool)
    if libraries:
        import sklearn.preprocessing
        from scipy import interpolate as scipy_interpolate
        from sklearn.model_selection import KFold
        embeddings = sklearn.preprocessing.normalize(embeddings)
        split = lambda: KFold(n_splits=FOLDS, shuffle=False).split(np.arange(len(same)))
        interpolate = lambda x, y, at: float(scipy_interpolate.interp1d(x, y, kind='slinear')(at))
    else:
        embeddings = normalize_rows(embeddings)
        split = lambda: folds(len(same))
        interpolate = slinear
    dist = np.sum(np.square(np.subtract(embeddings[0::2], embeddings[1::2])), 1)
    fold_accuracy, fold_threshold = roc_accuracy(dist, same, split())
    return {'dist': dist.tolist(), 'folds': [[int(t[0]), int(t[-1]) + 1] for _, t in split()],
            'fold_accuracy': fold_accuracy.tolist(), 'fold_threshold': fold_threshold,
            'accuracy_mean': float(np.mean(fold_accuracy)), 'accuracy_std': float(np.std(fold_accuracy)),
            'tar': tar_at_far(dist, same, list(split()), interpolate)}


def main(argv):
    args = [a for a in argv if not a.startswith('--')]
    if len(args) != 2:
        sys.exit(__doc__)
    embeddings = np.load(args[0]).astype(np.float64)
    issame = np.load(args[1])
    print(json.dumps(evaluate(embeddings, issame, libraries='--libraries' in argv)))


if __name__ == '__main__':
    main(sys.argv[1:])
