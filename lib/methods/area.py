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
- Also: the same areas on a log10 axis of the fractions, normalised by its length so that a perfect circuit
  scores 1 (`log_axis_value`), because the linear axis is dominated by the 50-100 % interval. MIB's code has
  this axis too, unused by default (`evaluate_area_under_curve(log_scale=True)`: natural log, not normalised);
  on MIB's grid its value is ours times ln(1000) (`mib_log_value`).
- Ties: edges are ranked by a stable sort (ties in edge order: sources in forward order, then receivers); MIB
  ranks with torch.argsort, which is not stable, so where equal scores straddle a cut the two circuits may
  differ. `tied_at_cut` (curve) and `edges_tied_at_cuts` (areas) count the edges whose score equals the score
  at the cut when the cut splits them (0: the circuit does not depend on the order of ties).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lib.core.graph import Graph
from lib.methods import intervals
from lib.methods.faithfulness import top_k

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
RANKINGS = {"cpr": "signed", "cmd": "abs"}  # which edge ranking each area uses


def prune_dangling(graph: Graph, keep: torch.Tensor) -> torch.Tensor:
    """Drop, until nothing changes, nodes without an incoming or an outgoing kept edge and the edges of
    dropped nodes (the EAP-IG library's prune)."""
    keep = keep.clone() & graph.edge_exists
    reads = graph.own_receivers
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


def mib_circuit_count(n_random: int, fractions=MIB_FRACTIONS) -> int:
    """Circuits mib_curves evaluates (for its progress bar)."""
    return (n_random + len(RANKINGS)) * len(fractions)


def tied_at_cut(graph: Graph, key: torch.Tensor, n: int) -> int:
    """How many existing edges share the key of the n-th ranked one when the cut after n splits them (0 if not)."""
    values = torch.sort(key[graph.edge_exists].flatten(), descending=True).values
    if not 0 < n < len(values) or values[n] != values[n - 1]:
        return 0
    return int((values == values[n - 1]).sum())


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


def mib_curves(
    ev,
    graph: Graph,
    importance: torch.Tensor,
    n_random: int = 10,
    seed: int = 0,
    n_bootstrap: int = 0,
    fractions=MIB_FRACTIONS,
    progress=None,
) -> tuple[list[dict], list[dict]]:
    """(curve rows, area rows) of the signed (CPR) and absolute (CMD) rankings of `importance` (larger = more
    important: -score for EAP, the worsening for ACDC) and of n_random random circuits per size, on the prompts
    of ev (a lib.faithfulness.Evaluator); the areas get 95% bootstrap intervals over prompts (every size's
    circuit, the full model and the empty circuit resampled jointly). progress (a bar) counts the circuits
    evaluated: n_random x sizes random ones, then 2 x sizes ranked ones (mib_circuit_count)."""
    full_m = np.asarray(ev.clean, dtype=float)
    empty_m = ev.metric(torch.zeros_like(graph.edge_exists))
    full, empty = float(full_m.mean()), float(empty_m.mean())

    def faithfulness(m):
        return (float(m.mean()) - empty) / (full - empty)

    ns = sizes(graph, fractions)
    rng = np.random.default_rng(seed)
    random_f = np.full((n_random, len(ns)), np.nan)
    random_kept = np.zeros((n_random, len(ns)))
    for d in range(n_random):  # one draw's circuits of every size per call: many circuits per forward pass
        draws = [random_circuit(graph, n, rng) for n in ns]
        for j, m in enumerate(ev.metrics(draws)):
            random_f[d, j], random_kept[d, j] = faithfulness(m), int(draws[j].sum())
        if progress is not None:
            progress.update(len(ns))
    curve_rows, area_rows = [], []
    for metric, ranking in RANKINGS.items():
        per_size, ties = [], []
        for j, (frac, n) in enumerate(zip(fractions, ns)):
            key = ranking_key(importance, ranking)
            keep = top_n(graph, key, n)
            ties.append(tied_at_cut(graph, key, n))
            per_size.append(ev.metric(keep))
            if progress is not None:
                progress.update(1)
            mean, low, high = _spread(random_f[:, j])
            curve_rows.append(
                {
                    "ranking": ranking,
                    "fraction": frac,
                    "edges_requested": n,
                    "edges_kept": int(keep.sum()),
                    "faithfulness": faithfulness(per_size[-1]),
                    "random_mean": mean,
                    "random_low": low,
                    "random_high": high,
                    "random_edges_kept": _spread(random_kept[:, j])[0],
                    "tied_at_cut": ties[-1],
                }
            )
        a = areas(fractions, [faithfulness(m) for m in per_size])
        key, log_key = ("area", "log_area") if metric == "cpr" else ("area_from_1", "log_area_from_1")
        row: dict[str, Any] = {"metric": metric, "ranking": ranking}
        for name, k in (("value", key), ("log_axis_value", log_key)):
            low, high = intervals.interval(
                _area_statistic(fractions, k), full_m, empty_m, *per_size, n_resamples=n_bootstrap, seed=seed
            )
            row |= {name: a[k], f"{name}_ci_low": low, f"{name}_ci_high": high}
        ln_span = float(np.log(fractions[-1] / fractions[0]))  # MIB's unnormalised natural-log axis
        row |= {
            "mib_log_value": row["log_axis_value"] * ln_span,
            "mib_log_value_ci_low": row["log_axis_value_ci_low"] * ln_span,
            "mib_log_value_ci_high": row["log_axis_value_ci_high"] * ln_span,
            "edges_tied_at_cuts": " ".join(map(str, ties)),
        }
        mean, low, high = _spread(area(random_f, fractions, key))
        row |= {
            "random_mean": mean,
            "random_low": low,
            "random_high": high,
            "relative_to_random": a[key] / mean if mean else np.nan,
            "log_axis_random_mean": _spread(area(random_f, fractions, log_key))[0],
            "n_random": n_random,
            "full_metric": full,
            "empty_metric": empty,
        }
        area_rows.append(row)
    return curve_rows, area_rows
