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
from lib.methods import intervals
from lib.methods.faithfulness import top_k

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


def ranking_key(importance: torch.Tensor, ranking: str) -> torch.Tensor:
    """Larger = kept first: the importance itself for the signed ranking (-score for EAP, see the module
    docstring; the worsening for ACDC), its absolute value for abs."""
    return importance if ranking == "signed" else importance.abs()


def top_n(graph: Graph, key: torch.Tensor, n: int) -> torch.Tensor:
    """The n existing edges with the largest key (ties by edge order), pruned of dangling edges."""
    return prune_dangling(graph, top_k(graph, key, n))


def sizes(graph: Graph, fractions=MIB_FRACTIONS) -> list[int]:
    return [int(f * graph.n_edges) for f in fractions]


AREAS = ("area", "area_from_1", "log_area", "log_area_from_1")


def area(faithfulness, fractions, key: str) -> np.ndarray:
    """One trapezoid area over the last axis of faithfulness [..., len(fractions)]: of f ("area") or of |1 - f|
    ("area_from_1"), on the linear axis of the fractions (MIB's CPR and CMD) or, for "log_..." keys, on the
    log10 axis normalised by its length."""
    x, f = np.asarray(fractions, dtype=float), np.asarray(faithfulness, dtype=float)
    log = key.startswith("log_")
    x = np.log10(x) if log else x
    g = np.abs(1 - f) if key.endswith("from_1") else f
    return np.trapezoid(g, x, axis=-1) / ((x[-1] - x[0]) if log else 1.0)


def areas(fractions, faithfulness) -> dict:
    """The four areas of one curve."""
    return {k: float(area(faithfulness, fractions, k)) for k in AREAS}


def random_circuit(graph: Graph, n: int, rng: np.random.Generator) -> torch.Tensor:
    """n existing edges drawn uniformly, then pruned like a ranked circuit."""
    return top_n(graph, torch.as_tensor(rng.random(graph.edge_exists.shape)), n)


def _area_statistic(fractions, key: str):
    """A vectorised statistic for the bootstrap: arrays = (full, empty, m at each size), per prompt."""
    def statistic(full, empty, *ms, axis=-1):
        k, c = np.mean(empty, axis=axis), np.mean(full, axis=axis)
        return area(np.stack([(np.mean(m, axis=axis) - k) / (c - k) for m in ms], axis=-1), fractions, key)
    return statistic


def _spread(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 %) of the random circuits' values (nan without any)."""
    if not len(values):
        return np.nan, np.nan, np.nan
    return float(np.mean(values)), float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def mib_curves(ev, graph: Graph, importance: torch.Tensor, n_random: int = 10, seed: int = 0, n_bootstrap: int = 0,
               fractions=MIB_FRACTIONS) -> tuple[list[dict], list[dict]]:
    """(curve rows, area rows) of the signed (CPR) and absolute (CMD) rankings of `importance` (larger = more
    important: -score for EAP, the worsening for ACDC) and of n_random random circuits per size, on the prompts
    of ev (a lib.faithfulness.Evaluator); the areas get 95% bootstrap intervals over prompts (every size's
    circuit, the full model and the empty circuit resampled jointly)."""
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
    curve_rows, area_rows = [], []
    for metric, ranking in RANKINGS.items():
        per_size = []
        for j, (frac, n) in enumerate(zip(fractions, ns)):
            keep = top_n(graph, ranking_key(importance, ranking), n)
            per_size.append(ev.metric(keep))
            mean, low, high = _spread(random_f[:, j])
            curve_rows.append({"ranking": ranking, "fraction": frac, "edges_requested": n,
                               "edges_kept": int(keep.sum()), "faithfulness": faithfulness(per_size[-1]),
                               "random_mean": mean, "random_low": low, "random_high": high,
                               "random_edges_kept": _spread(random_kept[:, j])[0]})
        a = areas(fractions, [faithfulness(m) for m in per_size])
        key, log_key = ("area", "log_area") if metric == "cpr" else ("area_from_1", "log_area_from_1")
        row = {"metric": metric, "ranking": ranking}
        for name, k in (("value", key), ("log_axis_value", log_key)):
            low, high = intervals.interval(_area_statistic(fractions, k), full_m, empty_m, *per_size,
                                           n_resamples=n_bootstrap, seed=seed)
            row |= {name: a[k], f"{name}_ci_low": low, f"{name}_ci_high": high}
        mean, low, high = _spread(area(random_f, fractions, key))
        row |= {"random_mean": mean, "random_low": low, "random_high": high,
                "relative_to_random": a[key] / mean if mean else np.nan,
                "log_axis_random_mean": _spread(area(random_f, fractions, log_key))[0],
                "n_random": n_random, "full_metric": full, "empty_metric": empty}
        area_rows.append(row)
    return curve_rows, area_rows
