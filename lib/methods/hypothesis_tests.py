"""Statistical tests of a circuit (Shi et al. 2024, "Hypothesis testing the circuit hypothesis in LLMs",
NeurIPS; published code: blei-lab/circuitry), on per-prompt task metrics of the full model M, the circuit C
and the circuit knocked out (every edge of C ablated, the rest kept).

Where the published code departs from the paper we follow the paper, and say so:
- equivalence: the statistic is the share of prompts on which C beats M, P(Delta > 0) with Delta = s(C) - s(M)
  (the code plugs the mean score difference into the same formula); prompts with Delta = 0 are ties and
  left out of n.
- independence: a permutation p-value counts the observed statistic, (1 + #{perm >= obs}) / (1 + n_perm); the
  Gaussian kernels take the median heuristic per variable (the code uses one median over cross distances).
- minimality: the per-edge p-values are Holm-corrected across the circuit's edges (the code leaves a TODO).
Random circuits are the code's (RandomPaths): sufficiency compares with unions of random input -> logits paths
grown to at least the circuit's size (so all connected, and possibly a few edges larger); minimality inflates
the circuit by random paths until at least one edge is new, and knocks out one of the new edges.
The distance between two runs is the code's default: the mean over prompts of the squared per-prompt difference.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import binom, binomtest

from lib.core.graph import Graph


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    adjusted = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over prompts of the squared per-prompt metric difference."""
    return float(np.mean((np.asarray(b) - np.asarray(a)) ** 2))


def equivalence(m_full: np.ndarray, m_circuit: np.ndarray, epsilon: float, tie: float) -> dict:
    """H0: |P(s(C) > s(M)) - 1/2| <= epsilon (equivalent). p = P(|K/n - 1/2| >= |k/n - 1/2|) with
    K ~ Binomial(n, 1/2 + epsilon), the boundary of H0; small p: not equivalent."""
    delta = np.asarray(m_circuit) - np.asarray(m_full)
    n = int((np.abs(delta) > tie).sum())
    k = int((delta > tie).sum())
    if n == 0:  # C and M agree on every prompt
        return {"statistic": 0.5, "p_value": 1.0, "n": 0, "k": 0, "ties": len(delta)}
    share = k / n
    j = np.arange(n + 1)
    extreme = np.abs(j / n - 0.5) >= abs(share - 0.5) - 1e-12
    p = float(binom.pmf(j[extreme], n, 0.5 + epsilon).sum())
    return {"statistic": share, "p_value": min(p, 1.0), "n": n, "k": k, "ties": len(delta) - n}


def _centered_gram(x: np.ndarray) -> np.ndarray:
    d = np.abs(x[:, None] - x[None, :])
    sigma = np.median(d[np.triu_indices(len(x), 1)]) if len(x) > 1 else 1.0
    gram = np.exp(-(d**2) / (2 * (sigma if sigma > 0 else 1.0) ** 2))
    return gram - gram.mean(0, keepdims=True) - gram.mean(1, keepdims=True) + gram.mean()


def hsic(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC (Gretton et al. 2007) of two 1-d samples, Gaussian kernels: trace(K H L H) / (n - 1)^2."""
    return float(
        (_centered_gram(np.asarray(x, float)) * _centered_gram(np.asarray(y, float))).sum() / (len(x) - 1) ** 2
    )


def independence(m_full: np.ndarray, m_knockout: np.ndarray, n_permutations: int, seed: int) -> dict:
    """H0: s(M(X)) independent of s(knocked-out circuit(X)); HSIC permutation test (small p: dependent, so the
    behaviour is not localized in the circuit). Permutations are evaluated in batches, as array operations."""
    kc, lc = _centered_gram(np.asarray(m_full, float)), _centered_gram(np.asarray(m_knockout, float))
    n = len(kc)
    observed = float((kc * lc).sum() / (n - 1) ** 2)
    rng = np.random.default_rng(seed)
    null = np.empty(n_permutations)
    for start in range(0, n_permutations, 256):
        perms = np.stack([rng.permutation(n) for _ in range(min(256, n_permutations - start))])  # [B, n]
        permuted = lc[perms[:, :, None], perms[:, None, :]]  # centring commutes with permuting both axes
        null[start : start + len(perms)] = (kc[None] * permuted).sum((1, 2)) / (n - 1) ** 2
    return {
        "statistic": observed,
        "p_value": float((1 + (null >= observed - 1e-15).sum()) / (1 + n_permutations)),
        "null": null,
        "n": n,
    }


class RandomPaths:
    """Random connected circuits as Shi et al.'s code draws them (circuitry/circuit/circuit.py: _sample_path,
    sample_circuit, sample_inflated): a path walks from input, at each node taking one of its outgoing edges
    uniformly (every receiver it feeds: a later head's q, k or v, an MLP, logits; so input->logits too), until
    it reaches logits; circuits are unions of such paths."""

    def __init__(self, graph: Graph, rng: np.random.Generator):
        self.graph, self.rng = graph, rng
        exists = graph.edge_exists.numpy()
        self.out = [np.flatnonzero(exists[s]) for s in range(graph.n_sources)]  # receivers each source feeds
        reads = graph.own_receivers.numpy()  # [S, R]: the node that reads through each receiver
        self.reader = np.where(reads.any(0), reads.argmax(0), -1)  # [R] source index; -1: logits

    def path(self) -> list[tuple[int, int]]:
        """The (source, receiver) edges of one walk input -> logits."""
        edges, s = [], 0
        while True:
            r = int(self.out[s][self.rng.integers(len(self.out[s]))])
            edges.append((s, r))
            if self.reader[r] < 0:
                return edges
            s = int(self.reader[r])

    def grow(self, keep: torch.Tensor, n_new: int) -> torch.Tensor:
        """keep [S, R] plus whole random paths until at least n_new edges are added (sample_inflated; from an
        empty keep, sample_circuit). Asking for every edge not yet kept gives the full graph at once (the one
        circuit of that size; the walk would have to collect every edge)."""
        missing = int((self.graph.edge_exists & ~keep).sum())
        if n_new > missing:
            raise ValueError(f"cannot add {n_new} edges: only {missing} are not in the circuit")
        if n_new == missing:
            return keep | self.graph.edge_exists
        grown, added = keep.clone(), 0
        while added < n_new:
            for s, r in self.path():
                if not grown[s, r]:
                    grown[s, r] = True
                    added += 1
        return grown


def minimality(
    metric,
    graph: Graph,
    keep: torch.Tensor,
    n_random: int,
    quantile: float,
    seed: int,
    max_edges: int | None = None,
    progress=None,
) -> dict:
    """Per circuit edge e, H0: knocking e out of C changes the output more than knocking a random added edge out
    of C inflated by random paths (until at least one edge is new; RandomPaths), with probability >= quantile;
    binomial test (alternative 'less'), Holm across edges. metric(keep) gives per-prompt metrics. A rejected
    edge is one the circuit could do without."""
    rng = np.random.default_rng(seed)
    paths = RandomPaths(graph, rng)
    base = metric(keep)
    random_d, random_added = [], []
    for _ in range(n_random):
        inflated = paths.grow(keep, 1)
        added = (inflated & ~keep).nonzero()  # [A, 2]
        knocked = inflated.clone()
        s, r = added[int(rng.integers(len(added)))]
        knocked[s, r] = False
        random_d.append(distance(metric(inflated), metric(knocked)))
        random_added.append(len(added))
        if progress is not None:
            progress.update(1)
    random_d = np.array(random_d)
    edges = graph.edges_of(keep)[:max_edges]
    rows = []
    for e in edges:
        k = keep.clone()
        k[graph.edge_index(e)] = False
        d = distance(base, metric(k))
        if progress is not None:
            progress.update(1)
        stat = int((d > random_d).sum())
        rows.append(
            {
                "edge": e,
                "knockout_distance": d,
                "share_above_random": stat / n_random,
                "p_value": binomtest(stat, n_random, quantile, alternative="less").pvalue,
            }
        )
    adjusted = holm([r["p_value"] for r in rows]) if rows else np.array([])
    for r, a in zip(rows, adjusted):
        r["p_value_holm"] = float(a)
    return {
        "edges": rows,
        "random": random_d,
        "random_added_edges": np.array(random_added),
        "p_value": float(adjusted.min()) if len(adjusted) else 1.0,
        "statistic": float(np.mean([r["share_above_random"] for r in rows])) if rows else np.nan,
    }


def sufficiency(
    metric,
    graph: Graph,
    keep: torch.Tensor,
    m_full: np.ndarray,
    n_random: int,
    quantile: float,
    seed: int,
    progress=None,
) -> dict:
    """H0: the circuit is at most as faithful (distance to M) as the quantile-th random circuit of its size
    (unions of random input -> logits paths with at least as many edges; RandomPaths); statistic = #{random circuits at least as far from M}; binomial test (alternative 'greater'). Small
    p: the circuit is better than random circuits of its size."""
    paths = RandomPaths(graph, np.random.default_rng(seed))
    d_circuit = distance(m_full, metric(keep))
    n = int(keep.sum())
    random_d, random_sizes = [], []
    empty = torch.zeros_like(keep)
    for _ in range(n_random):
        r = paths.grow(empty, n)  # at least n edges, every one on an input -> logits path
        random_d.append(distance(m_full, metric(r)))
        random_sizes.append(int(r.sum()))
        if progress is not None:
            progress.update(1)
    random_d = np.array(random_d)
    stat = int((d_circuit <= random_d).sum())
    return {
        "statistic": stat / n_random,
        "p_value": binomtest(stat, n_random, quantile, alternative="greater").pvalue,
        "circuit_distance": d_circuit,
        "random": random_d,
        "random_sizes": np.array(random_sizes),
        "n": n_random,
    }
