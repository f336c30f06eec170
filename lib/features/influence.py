"""Influence, pruning and scores of an attribution graph, as circuit-tracer's graph.py defines them
(normalize_matrix, compute_influence, compute_node_influence, compute_edge_influence, find_threshold,
prune_graph, compute_graph_scores, compute_partial_influences). Node order: [features, errors, tokens, logits];
adjacency[target, source]. Â = |A| with rows divided by their sums (clamped at 1e-10); influence = w · (Â + Â² +
...) for weights w on the logits (their probabilities), summed until it vanishes (the graph is acyclic)."""

from __future__ import annotations

from typing import NamedTuple

import torch


def normalize(adjacency: torch.Tensor) -> torch.Tensor:
    """|A| row-normalized (rows summing to 0 stay 0)."""
    a = adjacency.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def influence(normalized: torch.Tensor, weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """weights · (Â + Â² + ...) [n]; an error if the powers do not vanish (a cycle)."""
    current = weights @ normalized
    total = current.clone()
    for _ in range(max_iter):
        if not current.any():
            return total
        current = current @ normalized
        total += current
    raise RuntimeError(f"influence did not converge after {max_iter} iterations (the adjacency has a cycle)")


def node_influence(adjacency: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return influence(normalize(adjacency), weights)


def edge_influence(pruned: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Edge scores [n, n]: Â_pruned scaled by each target's influence plus its own weight."""
    normalized = normalize(pruned)
    target_influence = influence(normalized, weights) + weights
    return normalized * target_influence[:, None]


def find_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The score at which the sorted scores' cumulative share first reaches threshold."""
    ordered = torch.sort(scores, descending=True).values
    cumulative = torch.cumsum(ordered, 0) / ordered.sum()
    index = min(int(torch.searchsorted(cumulative, torch.tensor(threshold, dtype=cumulative.dtype))), len(ordered) - 1)
    return ordered[index]


def logit_weights(n: int, logit_probs: torch.Tensor) -> torch.Tensor:
    w = torch.zeros(n, dtype=logit_probs.dtype)
    w[n - len(logit_probs) :] = logit_probs
    return w


class Pruned(NamedTuple):
    node_mask: torch.Tensor  # [n] bool
    edge_mask: torch.Tensor  # [n, n] bool
    cumulative: torch.Tensor  # [n] each node's cumulative influence share (circuit-tracer's cumulative_scores)
    influence: torch.Tensor  # [n] node influence


def prune(
    adjacency: torch.Tensor,
    weights: torch.Tensor,
    n_features: int,
    n_tokens: int,
    n_logits: int,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> Pruned:
    """circuit-tracer's prune_graph: nodes to node_threshold of cumulative influence (tokens and logits always
    kept), edges to edge_threshold of cumulative edge score, then features and errors without an outgoing edge
    and features without an incoming one dropped, repeatedly until nothing changes."""
    if not (0.0 <= node_threshold <= 1.0 and 0.0 <= edge_threshold <= 1.0):
        raise ValueError("thresholds must be between 0 and 1")
    n = adjacency.shape[0]
    fixed = n_logits + n_tokens  # tokens and logits, at the end
    infl = node_influence(adjacency, weights)
    node_mask = infl >= find_threshold(infl, node_threshold)
    node_mask[n - fixed :] = True
    pruned = adjacency.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    scores = edge_influence(pruned, weights)
    edge_mask = scores >= find_threshold(scores.flatten(), edge_threshold)
    old = None
    while old is None or not torch.equal(old, node_mask):
        old = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[: n - fixed] &= edge_mask[:, : n - fixed].any(0)  # features and errors need an outgoing edge
        node_mask[:n_features] &= edge_mask[:n_features].any(1)  # features need an incoming edge
    ordered, index = torch.sort(infl, descending=True)
    cumulative = torch.zeros_like(infl)
    cumulative[index] = torch.cumsum(ordered, 0) / ordered.sum()
    return Pruned(node_mask, edge_mask, cumulative, infl)


def scores(adjacency: torch.Tensor, weights: torch.Tensor, n_features: int, n_errors: int, n_tokens: int) -> tuple:
    """circuit-tracer's compute_graph_scores: (replacement score, completeness score). Replacement: the share of
    the token and error nodes' influence that is the tokens'; completeness: each node's share of incoming
    normalized weight not from error nodes, averaged with weights influence + own weight."""
    normalized = normalize(adjacency)
    infl = influence(normalized, weights)
    e0, e1 = n_features, n_features + n_errors
    token_influence, error_influence = infl[e1 : e1 + n_tokens].sum(), infl[e0:e1].sum()
    replacement = token_influence / (token_influence + error_influence)
    non_error = 1 - normalized[:, e0:e1].sum(-1)
    output = infl + weights
    completeness = (non_error * output).sum() / output.sum()
    return float(replacement), float(completeness)


def partial_influence(
    rows: torch.Tensor, logit_probs: torch.Tensor, row_nodes: torch.Tensor, n: int, max_iter: int = 128
) -> torch.Tensor:
    """circuit-tracer's compute_partial_influences: influence on the logits through the rows computed so far
    (rows [r, width], row_nodes [r] the node each row is, logits numbered width..n-1)."""
    normalized = normalize(rows)
    prod = torch.zeros(n, dtype=rows.dtype, device=rows.device)
    prod[n - len(logit_probs) :] = logit_probs
    total = torch.zeros(rows.shape[1], dtype=rows.dtype, device=rows.device)
    for _ in range(max_iter):
        prod_cols = prod[row_nodes] @ normalized  # [width]
        if not prod_cols.any():
            return total
        total += prod_cols
        prod = torch.zeros(n, dtype=rows.dtype, device=rows.device)
        prod[: rows.shape[1]] = prod_cols
    raise RuntimeError("partial influence did not converge")
