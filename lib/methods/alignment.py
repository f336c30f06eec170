"""Aligning two models' representations: feature matching by activation correlation (one-to-one by the
Hungarian assignment, and each feature's best partner both ways, with splits and merges), and linear maps
between activations (ridge regression) with their held-out R^2."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def correlations(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pearson correlation of every column of a [T, Fa] with every column of b [T, Fb] over the same T rows,
    as [Fa, Fb] float64; with which columns vary at all (alive [Fa], [Fb]): a constant column correlates 0."""
    a, b = a.double(), b.double()
    a, b = a - a.mean(0), b - b.mean(0)
    norm_a, norm_b = a.norm(dim=0), b.norm(dim=0)  # [Fa], [Fb]
    alive_a, alive_b = norm_a > 0, norm_b > 0
    corr = (a.T @ b) / (norm_a.clamp_min(1e-300)[:, None] * norm_b.clamp_min(1e-300)[None])
    corr = corr * alive_a[:, None] * alive_b[None]
    return corr.clamp(-1, 1).cpu().numpy(), alive_a.cpu().numpy(), alive_b.cpu().numpy()


@dataclass
class Matching:
    """Features of A against features of B (indices into each dictionary)."""

    pairs: np.ndarray  # [M, 2] one-to-one (Hungarian) pairs among the features alive in both: a index, b index
    pair_correlation: np.ndarray  # [M]
    best_b: np.ndarray  # [Fa] each A feature's most correlated B feature (-1 where dead)
    best_b_correlation: np.ndarray  # [Fa]
    best_a: np.ndarray  # [Fb]
    best_a_correlation: np.ndarray  # [Fb]
    alive_a: np.ndarray  # [Fa] bool
    alive_b: np.ndarray  # [Fb] bool

    def splits_and_merges(self, min_correlation: float) -> dict:
        """Non-injective partners, counting a partner only at correlation >= min_correlation: a split is an A
        feature that is the best partner of several B features; a merge is a B feature that is the best partner
        of several A features."""

        def shared(best: np.ndarray, corr: np.ndarray, n: int) -> np.ndarray:  # [n] how often each is chosen
            return np.bincount(best[(best >= 0) & (np.nan_to_num(corr, nan=-1) >= min_correlation)], minlength=n)

        by_a = shared(self.best_a, self.best_a_correlation, len(self.alive_a))  # [Fa] B features choosing it
        by_b = shared(self.best_b, self.best_b_correlation, len(self.alive_b))  # [Fb] A features choosing it
        return {
            "splits": int((by_a >= 2).sum()),
            "features_in_splits": int(by_a[by_a >= 2].sum()),
            "merges": int((by_b >= 2).sum()),
            "features_in_merges": int(by_b[by_b >= 2].sum()),
            "mutual_best_partners": int(
                sum(
                    1
                    for i, j in enumerate(self.best_b)
                    if j >= 0 and self.best_a[j] == i and self.best_b_correlation[i] >= min_correlation
                )
            ),
        }


def match(corr: np.ndarray, alive_a: np.ndarray, alive_b: np.ndarray, tie_break: np.ndarray | None = None) -> Matching:
    """One-to-one matching maximizing total correlation (scipy's linear_sum_assignment, the Hungarian method)
    among features alive in both, and every feature's best partner both ways. tie_break [Fa, Fb] (>= 0, e.g. how
    far apart two features' effects are) only decides between partners whose correlations differ by less than
    1e-9 (features whose activations agree on every token seen): it is subtracted scaled to at most 1e-9."""
    from scipy.optimize import linear_sum_assignment

    score = corr
    if tie_break is not None:
        score = corr - 1e-9 * tie_break / max(float(tie_break.max()), 1e-300)
    ia, ib = np.flatnonzero(alive_a), np.flatnonzero(alive_b)
    if len(ia) and len(ib):
        rows, cols = linear_sum_assignment(score[np.ix_(ia, ib)], maximize=True)
        pairs = np.stack([ia[rows], ib[cols]], 1)
    else:
        pairs = np.zeros((0, 2), dtype=np.int64)
    masked = np.where(alive_a[:, None] & alive_b[None], score, -np.inf)
    best_b = np.where(alive_a & alive_b.any(), masked.argmax(1), -1)
    best_a = np.where(alive_b & alive_a.any(), masked.argmax(0), -1)
    return Matching(
        pairs=pairs,
        pair_correlation=corr[pairs[:, 0], pairs[:, 1]],
        best_b=best_b,
        best_b_correlation=np.where(best_b >= 0, corr[np.arange(len(best_b)), best_b.clip(0)], np.nan),
        best_a=best_a,
        best_a_correlation=np.where(best_a >= 0, corr[best_a.clip(0), np.arange(len(best_a))], np.nan),
        alive_a=alive_a,
        alive_b=alive_b,
    )


@dataclass
class LinearMap:
    """y ~ x @ weight + bias, fitted by ridge regression."""

    weight: torch.Tensor  # [Da, Db] float64
    bias: torch.Tensor  # [Db]
    alpha: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() @ self.weight.to(x.device) + self.bias.to(x.device)).to(x.dtype)


def ridge(x: torch.Tensor, y: torch.Tensor, alpha: float) -> LinearMap:
    """Ridge regression of y [N, Db] on x [N, Da] with an intercept: the penalty is alpha times the mean
    eigenvalue of the centred x'x (so alpha is scale-free; alpha = 0 is least squares)."""
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc  # [Da, Da]
    penalty = alpha * float(gram.diagonal().mean())
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    weight = torch.linalg.lstsq(gram + penalty * eye, xc.T @ yc).solution  # [Da, Db]
    return LinearMap(weight.cpu(), (my - mx @ weight).cpu(), alpha)


def r_squared(y: torch.Tensor, predicted: torch.Tensor) -> float:
    """1 - residual sum of squares / total sum of squares about y's column means, summed over every column
    (the share of y's variance the prediction explains)."""
    y, predicted = y.double(), predicted.double()
    total = float(((y - y.mean(0)) ** 2).sum())
    return 1.0 - float(((y - predicted) ** 2).sum()) / total if total > 0 else float("nan")


def fit_map(x: torch.Tensor, y: torch.Tensor, alpha: float | None) -> LinearMap:
    """ridge with the given alpha, or ridge_cv's when alpha is None."""
    return ridge_cv(x, y) if alpha is None else ridge(x, y, alpha)


ALPHA_GRID = tuple(10.0**e for e in range(-10, 3))  # candidate penalties of ridge_cv, ascending


def ridge_cv(x: torch.Tensor, y: torch.Tensor, alphas=ALPHA_GRID, folds: int = 5) -> LinearMap:
    """ridge with the penalty chosen by k-fold cross-validation over contiguous blocks of rows (rows come prompt
    by prompt, so a block holds whole prompts but at its ends): the alpha of least held-out squared error
    (the smallest on ties), refitted on every row. One SVD per fold serves every alpha."""
    x, y = x.double(), y.double()
    n = len(x)
    folds = max(2, min(folds, n))
    edges = np.linspace(0, n, folds + 1).round().astype(int)
    errors = np.zeros(len(alphas))
    for f in range(folds):
        test = torch.zeros(n, dtype=torch.bool)
        test[edges[f] : edges[f + 1]] = True
        xt, yt = x[~test], y[~test]
        mx, my = xt.mean(0), yt.mean(0)
        xc, yc = xt - mx, yt - my
        # x'x = V diag(s^2) V' from the thin SVD of x (LAPACK's eigh of x'x fails to converge on the many repeated
        # zero eigenvalues of sparse feature activations); x'y lies in V's span, so the thin V is exact
        _, singular, vh = torch.linalg.svd(xc, full_matrices=False)
        values, vectors = singular**2, vh.T  # [r], [Da, r]
        projected = vectors.T @ (xc.T @ yc)  # [r, Db]
        penalties = torch.tensor(alphas, dtype=x.dtype) * float((xc**2).sum(0).mean())  # [A]: alpha x mean eigenvalue
        shrink = 1.0 / (values[None] + penalties[:, None]).clamp_min(1e-300)  # [A, r]
        weights = torch.einsum("ij,aj,jk->aik", vectors, shrink, projected)  # [A, Da, Db], every alpha at once
        predicted = (x[test] - mx) @ weights + my  # [A, T_test, Db]
        errors += ((y[test] - predicted) ** 2).sum((1, 2)).numpy()
    best = alphas[int(np.argmin(errors))]
    return ridge(x, y, best)
