"""Area metrics of a faithfulness-vs-size curve as the MIB circuit localization track computes them (Mueller
et al. 2025, "MIB: A Mechanistic Interpretability Benchmark"; its evaluation code, `evaluate_area_under_curve`
and `Graph.apply_topn`/`Graph.prune` of the EAP-IG library it uses), with a random-circuit baseline.

- Sizes: 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100 % of all edges; n = floor(fraction x edges).
- Circuit at size n: the n top-ranked edges, then pruned of dangling edges (a node without an incoming or an
  outgoing edge is dropped, with its edges, until nothing changes; `input` always has inputs, `logits` is
  always there).
- Faithfulness f = (m(C) - m(empty)) / (m(full) - m(empty)), each m a mean over the prompts (ratio of batch
  means), not clamped; every edge outside C is patched with the ablation (the counterfactual by default).
- CPR = trapezoid area under f on the linear axis of the fractions, edges ranked by signed score; CMD = the
  trapezoid area of |1 - f|, edges ranked by |score|. MIB's attribution maximises the loss -m, so its
  "largest signed score first" is our most negative score first (our scores estimate m(ablated) - m(clean)).
- Also (not in MIB): the same areas on a log10 axis of the fractions, normalised by its length so that a
  perfect circuit scores 1, because the linear axis is dominated by the 50-100 % interval.
"""

from __future__ import annotations

import numpy as np
import torch

from lib.core.graph import Graph

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
RANKINGS = {"cpr": "signed", "cmd": "abs"}  # which edge ranking each area uses


def own_receivers(graph: Graph) -> torch.Tensor:
    """[S, R] bool: the receivers through which each source node reads (a head: q, k, v; an MLP: its input)."""
    m = torch.zeros(graph.n_sources, graph.n_receivers, dtype=torch.bool)
    for l in range(graph.n_layers):
        for h in range(graph.n_heads):
            for kind in "qkv":
                m[graph.head_source(l, h), graph.qkv_receivers(l, kind).start + h] = True
        m[graph.mlp_source(l), graph.mlp_receiver(l)] = True
    return m


def prune_dangling(graph: Graph, keep: torch.Tensor) -> torch.Tensor:
    """Drop, until nothing changes, nodes without an incoming or an outgoing kept edge and the edges of
    dropped nodes (the EAP-IG library's prune)."""
    keep = keep.clone() & graph.edge_exists
    reads = own_receivers(graph)
    while True:
        has_out = keep.any(1)  # [S]
        has_in = (reads & keep.any(0)[None, :]).any(1)
        has_in[0] = True  # input
        alive = has_out & has_in  # [S]
        receiver_alive = (reads & alive[:, None]).any(0)  # [R]
        receiver_alive[graph.logits_receiver] = True
        pruned = keep & alive[:, None] & receiver_alive[None, :]
        if torch.equal(pruned, keep):
            return keep
        keep = pruned


def ranking_key(scores: torch.Tensor, ranking: str) -> torch.Tensor:
    """For EAP scores (estimates of m(ablated) - m(clean)), larger = kept first: -score for the signed ranking
    (see the module docstring), |score| for abs."""
    return -scores if ranking == "signed" else scores.abs()


def top_n(graph: Graph, key: torch.Tensor, n: int) -> torch.Tensor:
    """The n existing edges with the largest key (ties by edge order), pruned of dangling edges."""
    flat = torch.where(graph.edge_exists, key.double(), torch.tensor(-torch.inf, dtype=torch.float64)).flatten()
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, descending=True, stable=True).indices[:n]] = True
    return prune_dangling(graph, keep.view_as(graph.edge_exists))


def sizes(graph: Graph, fractions=MIB_FRACTIONS) -> list[int]:
    return [int(f * graph.n_edges) for f in fractions]


def areas(fractions, faithfulness) -> dict:
    """Trapezoid areas of f and of |1 - f| over the fractions: linear axis (MIB's CPR and CMD) and log10 axis
    normalised by its length."""
    x, f = np.asarray(fractions, dtype=float), np.asarray(faithfulness, dtype=float)
    lx = np.log10(x)
    return {"area": float(np.trapezoid(f, x)), "area_from_1": float(np.trapezoid(np.abs(1 - f), x)),
            "log_area": float(np.trapezoid(f, lx) / (lx[-1] - lx[0])),
            "log_area_from_1": float(np.trapezoid(np.abs(1 - f), lx) / (lx[-1] - lx[0]))}


def random_circuit(graph: Graph, n: int, rng: np.random.Generator) -> torch.Tensor:
    """n existing edges drawn uniformly, then pruned like a ranked circuit."""
    return top_n(graph, torch.as_tensor(rng.random(graph.edge_exists.shape)), n)


def _area_statistic(fractions, key: str):
    """A vectorised statistic for the bootstrap: arrays = (full, empty, m at each size), per prompt."""
    def statistic(full, empty, *ms, axis=-1):
        k, c = np.mean(empty, axis=axis), np.mean(full, axis=axis)
        f = np.stack([(np.mean(m, axis=axis) - k) / (c - k) for m in ms], axis=-1)
        x = np.asarray(fractions, dtype=float)
        if key.startswith("log_"):
            x = np.log10(x)
        g = np.abs(1 - f) if key.endswith("from_1") else f
        return np.trapezoid(g, x, axis=-1) / ((x[-1] - x[0]) if key.startswith("log_") else 1.0)
    return statistic


def mib_curves(ev, graph: Graph, importance: torch.Tensor, n_random: int = 10, seed: int = 0, n_bootstrap: int = 0,
               fractions=MIB_FRACTIONS) -> tuple[list[dict], list[dict]]:
    """(curve rows, area rows) of the signed (CPR) and absolute (CMD) rankings of `importance` (larger = more
    important: -score for EAP, the worsening for ACDC) and of n_random random circuits per size, on the prompts
    of ev (a lib.faithfulness.Evaluator); the areas get 95% bootstrap intervals over prompts (every size's
    circuit, the full model and the empty circuit resampled jointly)."""
    from lib.methods import intervals

    full_m = np.asarray(ev.clean, dtype=float)
    empty_m = ev.metric(torch.zeros_like(graph.edge_exists))
    full, empty = float(full_m.mean()), float(empty_m.mean())

    def faithfulness(m):
        return (float(m.mean()) - empty) / (full - empty)

    ns = sizes(graph, fractions)
    rng = np.random.default_rng(seed)
    random_f = np.full((n_random, len(ns)), np.nan)
    random_kept = np.zeros((n_random, len(ns)))
    draws = [random_circuit(graph, n, rng) for _ in range(n_random) for n in ns]  # draw-major
    if draws:  # many circuits per forward pass
        for i, m in enumerate(ev.metrics(draws)):
            d, j = divmod(i, len(ns))
            random_f[d, j], random_kept[d, j] = faithfulness(m), int(draws[i].sum())
    random_areas = [areas(fractions, random_f[d]) for d in range(n_random)]
    curve_rows, area_rows = [], []
    for metric, ranking in RANKINGS.items():
        per_size = []
        for j, (frac, n) in enumerate(zip(fractions, ns)):
            keep = top_n(graph, importance if ranking == "signed" else importance.abs(), n)
            per_size.append(ev.metric(keep))
            curve_rows.append({"ranking": ranking, "fraction": frac, "edges_requested": n,
                               "edges_kept": int(keep.sum()), "faithfulness": faithfulness(per_size[-1]),
                               "random_mean": float(np.mean(random_f[:, j])) if n_random else np.nan,
                               "random_low": float(np.quantile(random_f[:, j], 0.025)) if n_random else np.nan,
                               "random_high": float(np.quantile(random_f[:, j], 0.975)) if n_random else np.nan,
                               "random_edges_kept": float(np.mean(random_kept[:, j])) if n_random else np.nan})
        a = areas(fractions, [faithfulness(m) for m in per_size])
        key, log_key = ("area", "log_area") if metric == "cpr" else ("area_from_1", "log_area_from_1")
        row = {"metric": metric, "ranking": ranking}
        for name, k in (("value", key), ("log_axis_value", log_key)):
            low, high = intervals.interval(_area_statistic(fractions, k), full_m, empty_m, *per_size,
                                           n_resamples=n_bootstrap, seed=seed)
            row |= {name: a[k], f"{name}_ci_low": low, f"{name}_ci_high": high}
        rand = np.array([r[key] for r in random_areas])
        rand_log = np.array([r[log_key] for r in random_areas])
        row |= {"random_mean": float(rand.mean()) if n_random else np.nan,
                "random_low": float(np.quantile(rand, 0.025)) if n_random else np.nan,
                "random_high": float(np.quantile(rand, 0.975)) if n_random else np.nan,
                "relative_to_random": a[key] / float(rand.mean()) if n_random and rand.mean() else np.nan,
                "log_axis_random_mean": float(rand_log.mean()) if n_random else np.nan,
                "n_random": n_random, "full_metric": full, "empty_metric": empty}
        area_rows.append(row)
    return curve_rows, area_rows
