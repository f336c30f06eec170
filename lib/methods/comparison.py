"""Comparing circuits: edge and node Jaccard, overlap with a reference, how the node set moves with the
threshold, and stability under bootstrap resampling of the discovery prompts.

Score-based discovery (EAP, EAP-IG) averages per-prompt scores, so a bootstrap prompt set's scores are the
count-weighted mean of the per-prompt scores: rediscovery on R resamples is one matrix product, equal to
rerunning the method on each resampled set (tested).
"""

from __future__ import annotations

import numpy as np
import torch

from lib.core.graph import Graph
from lib.methods.faithfulness import top_k_mask


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a & b| / |a | b| of two [S, R] bool masks (1 for two empty sets)."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def node_set(graph: Graph, keep: torch.Tensor) -> set[str]:
    return set(graph.nodes_of(keep))


def node_jaccard(graph: Graph, a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = node_set(graph, a), node_set(graph, b)
    return 1.0 if not (na | nb) else len(na & nb) / len(na | nb)


def overlap(graph: Graph, keep: torch.Tensor, reference: torch.Tensor) -> dict:
    """Edge precision, recall and Jaccard of a circuit against a reference circuit, and node Jaccard."""
    both = int((keep & reference).sum())
    return {
        "reference_precision": both / max(int(keep.sum()), 1),
        "reference_recall": both / max(int(reference.sum()), 1),
        "reference_edge_jaccard": jaccard(keep, reference),
        "reference_node_jaccard": node_jaccard(graph, keep, reference),
    }


def pairwise(graph: Graph, circuits: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Edge and node Jaccard matrices [C, C] of named circuits (in dict order)."""
    masks = list(circuits.values())
    n = len(masks)
    edges, nodes = np.ones((n, n)), np.ones((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            edges[i, j] = edges[j, i] = jaccard(masks[i], masks[j])
            nodes[i, j] = nodes[j, i] = node_jaccard(graph, masks[i], masks[j])
    return edges, nodes


def node_set_stable_from(graph: Graph, sizes: list[int], keeps: list[torch.Tensor]) -> int:
    """The smallest size from which the node set no longer changes as the circuit grows (sizes ascending)."""
    nodes = [node_set(graph, k) for k in keeps]
    stable = sizes[-1]
    for i in range(len(sizes) - 1, 0, -1):
        if nodes[i - 1] != nodes[-1]:
            break
        stable = sizes[i - 1]
    return stable


def bootstrap_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n] prompt indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def resampled_scores(items: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    """Mean edge scores [R, S, R'] of each bootstrap prompt set, from per-prompt scores items [N, S, R']."""
    n = items.shape[0]
    counts = torch.zeros(len(idx), n, dtype=torch.float64)
    counts.scatter_add_(1, torch.as_tensor(idx, dtype=torch.long), torch.ones(idx.shape, dtype=torch.float64))
    return torch.einsum("rn,nsc->rsc", counts / idx.shape[1], items.double())


def stability(graph: Graph, items: torch.Tensor, k: int, idx: np.ndarray) -> torch.Tensor:
    """[S, R] fraction of bootstrap prompt sets whose top-k circuit (by |mean score|) keeps each edge."""
    scores = resampled_scores(items, idx)
    kept = torch.stack([top_k_mask(graph, s, k) for s in scores])
    return kept.double().mean(0)
