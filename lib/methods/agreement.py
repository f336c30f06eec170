"""How good is the linear estimate? Exact single-edge effects next to EAP / EAP-IG scores (Syed, Rager &
Conmy 2023, section 5): correlations, the line of best fit, top-k agreement, the worst outliers, and the
metric along the straight line from an edge's clean to its ablated value.

exact(u -> r) = mean over prompts of metric(edge u -> r ablated) - metric(clean), the quantity EAP estimates.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from lib.core.graph import Graph
from lib.core.metrics import data_metric
from lib.core.patching import ablation_values, receiver_groups
from lib.core.recompute import Restart


def single_edge_metrics(
    model,
    graph: Graph,
    data,
    edges: list[tuple[int, int, float]],
    ablation: str = "resample",
    batch_size: int = 32,
    rows_per_pass: int | None = None,
    progress=None,
) -> np.ndarray:
    """Task metric [E, N] with each edge (s, r, lam) moved a fraction lam from its clean value (0) to its ablated
    one (1), many edges per forward pass, each in its own block of rows. A block differs from the clean run only
    at its receiver, which reads lam * delta_u = lam * (ablation(u) - out_u(this run)) on top: u writes before
    r, and nothing before r is patched, so out_u is the clean run's. Edges are taken in receiver order and each
    pass recomputes only from its earliest receiver's layer (lib.core.recompute)."""
    out = np.empty((len(edges), len(data)))
    groups = list(receiver_groups(graph))
    order = sorted(range(len(edges)), key=lambda i: edges[i][1])
    for start in range(0, len(data), batch_size):
        batch = data.subset(slice(start, start + batch_size))
        B = len(batch)
        restart = Restart(model, batch.clean, graph)  # also the clean run's source outputs
        assert restart.outs is not None  # a Restart with a graph keeps the source outputs
        delta = ablation_values(model, graph, batch, ablation) - restart.outs
        per_pass = max(1, (rows_per_pass or model.rows_per_pass) // B)
        for e0 in range(0, len(order), per_pass):
            idx = order[e0 : e0 + per_pass]
            chunk = [edges[i] for i in idx]
            hooks = []
            for name, cols, _ in groups:
                mine = [
                    (m, s, r - cols.start, lam) for m, (s, r, lam) in enumerate(chunk) if cols.start <= r < cols.stop
                ]
                if not mine:
                    continue

                def hook(x, hook, mine=mine, B=B, delta=delta):
                    x = x.clone()
                    for m, s, j, lam in mine:
                        rows = slice(m * B, (m + 1) * B)
                        if x.dim() == 4:
                            x[rows, :, j] += lam * delta[s]
                        else:
                            x[rows] += lam * delta[s]
                    return x

                hooks.append((name, hook))
            rep = batch.subset(torch.arange(B).repeat(len(chunk)))
            logits = restart.answer_logits(
                graph.receiver_layer(chunk[0][1]), rep.answer_pos.to(model.device), hooks, copies=len(chunk)
            )
            out[idx, start : start + B] = data_metric(logits, rep).view(len(chunk), B).cpu().numpy()
            if progress is not None:
                progress.update(len(chunk))
    return out


def exact_effects(
    model,
    graph: Graph,
    data,
    edges: list[tuple[int, int]],
    clean_metric: np.ndarray,
    ablation: str = "resample",
    batch_size: int = 32,
    rows_per_pass: int | None = None,
    progress=None,
) -> np.ndarray:
    """Per edge and prompt [E, N]: metric with that edge alone ablated minus the clean metric (progress counts
    edges x batches)."""
    m = single_edge_metrics(
        model, graph, data, [(s, r, 1.0) for s, r in edges], ablation, batch_size, rows_per_pass, progress
    )
    return m - clean_metric[None]


def interpolation(
    model,
    graph: Graph,
    data,
    edges: list[tuple[int, int]],
    lambdas: list[float],
    ablation: str = "resample",
    batch_size: int = 32,
) -> np.ndarray:
    """[E, L] mean metric with each edge moved a fraction lambda from its clean value (0) to its ablated one (1)."""
    m = single_edge_metrics(
        model, graph, data, [(s, r, lam) for s, r in edges for lam in lambdas], ablation, batch_size
    )
    return m.mean(1).reshape(len(edges), len(lambdas))


def agreement(estimate: np.ndarray, exact: np.ndarray, ks: tuple[int, ...] = (10, 50, 100)) -> dict:
    """Pearson, Spearman, R^2 and the least-squares line exact ~ slope * estimate + intercept, and the Jaccard
    of the top-k sets by |value| for each k."""
    fit = stats.linregress(estimate, exact)
    out = {
        "n_edges": len(exact),
        "pearson": float(fit.rvalue),
        "spearman": float(stats.spearmanr(estimate, exact).statistic),
        "r2": float(fit.rvalue**2),
        "slope": float(fit.slope),
        "intercept": float(fit.intercept),
        "mean_abs_error": float(np.abs(estimate - exact).mean()),
    }
    for k in ks:
        if k <= len(exact):
            a = set(np.argsort(-np.abs(estimate), kind="stable")[:k])
            b = set(np.argsort(-np.abs(exact), kind="stable")[:k])
            out[f"top{k}_jaccard"] = len(a & b) / len(a | b)
    return out


def stratified_sample(scores: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n indices spread over the rank of |score|: one drawn from each of n equal strata of the ranking."""
    order = np.argsort(-np.abs(scores), kind="stable")
    if n >= len(order):
        return np.sort(order)
    rng = np.random.default_rng(seed)
    bounds = np.linspace(0, len(order), n + 1).astype(int)
    return np.sort(np.array([order[rng.integers(lo, hi)] for lo, hi in zip(bounds[:-1], bounds[1:])]))
