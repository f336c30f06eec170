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
    gram = np.exp(-(d ** 2) / (2 * (sigma if sigma > 0 else 1.0) ** 2))
    return gram - gram.mean(0, keepdims=True) - gram.mean(1, keepdims=True) + gram.mean()


def hsic(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC (Gretton et al. 2007) of two 1-d samples, Gaussian kernels: trace(K H L H) / (n - 1)^2."""
    return float((_centered_gram(np.asarray(x, float)) * _centered_gram(np.asarray(y, float))).sum() / (len(x) - 1) ** 2)


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
        null[start:start + len(perms)] = (kc[None] * permuted).sum((1, 2)) / (n - 1) ** 2
    return {"statistic": observed, "p_value": float((1 + (null >= observed - 1e-15).sum()) / (1 + n_permutations)),
            "null": null, "n": n}


def random_path(graph: Graph, rng: np.random.Generator) -> list[str]:
    """Edges of a random path input -> one or two nodes at increasing layers -> logits (a head is entered
    through a random one of q, k, v)."""
    n_mid = int(rng.integers(1, 3)) if graph.n_layers > 1 else 1
    layers = np.sort(rng.choice(graph.n_layers, size=min(n_mid, graph.n_layers), replace=False))
    nodes = []
    for l in layers:
        h = int(rng.integers(graph.n_heads + 1))
        nodes.append(f"m{l}" if h == graph.n_heads else f"a{l}.h{h}")
    chain, edges = ["input", *nodes], []
    for src, dst in zip(chain, nodes):
        edges.append(f"{src}->{dst}" if dst.startswith("m") else f"{src}->{dst}<{'qkv'[int(rng.integers(3))]}>")
    return edges + [f"{nodes[-1]}->logits"]


def minimality(metric, graph: Graph, keep: torch.Tensor, n_random: int, quantile: float, seed: int,
               max_edges: int | None = None, progress=None) -> dict:
    """Per circuit edge e, H0: knocking e out of C changes the output more than knocking a random edge out of
    C inflated by a random path, with probability >= quantile; binomial test (alternative 'less'), Holm across
    edges. metric(keep) gives per-prompt metrics. A rejected edge is one the circuit could do without."""
    rng = np.random.default_rng(seed)
    base = metric(keep)
    random_d = []
    while len(random_d) < n_random:
        added = [e for e in random_path(graph, rng) if not keep[graph.edge_index(e)]]
        if not added:
            continue
        inflated = keep | graph.mask_of(added)
        knocked = inflated.clone()
        knocked[graph.edge_index(added[int(rng.integers(len(added)))])] = False
        random_d.append(distance(metric(inflated), metric(knocked)))
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
        rows.append({"edge": e, "knockout_distance": d, "share_above_random": stat / n_random,
                     "p_value": binomtest(stat, n_random, quantile, alternative="less").pvalue})
    adjusted = holm([r["p_value"] for r in rows]) if rows else np.array([])
    for r, a in zip(rows, adjusted):
        r["p_value_holm"] = float(a)
    return {"edges": rows, "random": random_d, "p_value": float(adjusted.min()) if len(adjusted) else 1.0,
            "statistic": float(np.mean([r["share_above_random"] for r in rows])) if rows else np.nan}


def sufficiency(metric, graph: Graph, keep: torch.Tensor, m_full: np.ndarray, n_random: int, quantile: float,
                seed: int, progress=None) -> dict:
    """H0: the circuit is at most as faithful (distance to M) as the quantile-th random circuit of the same
    size; statistic = #{random circuits at least as far from M}; binomial test (alternative 'greater'). Small
    p: the circuit is better than random circuits of its size."""
    rng = np.random.default_rng(seed)
    d_circuit = distance(m_full, metric(keep))
    exists = graph.edge_exists.flatten().nonzero()[:, 0].numpy()
    n = int(keep.sum())
    random_d = []
    for _ in range(n_random):
        r = torch.zeros(graph.edge_exists.numel(), dtype=torch.bool)
        r[rng.choice(exists, size=n, replace=False)] = True
        random_d.append(distance(m_full, metric(r.view_as(keep))))
        if progress is not None:
            progress.update(1)
    random_d = np.array(random_d)
    stat = int((d_circuit <= random_d).sum())
    return {"statistic": stat / n_random, "p_value": binomtest(stat, n_random, quantile, alternative="greater").pvalue,
            "circuit_distance": d_circuit, "random": random_d, "n": n_random}
