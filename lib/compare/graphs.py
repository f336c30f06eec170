"""Attribution graphs of two models on the same prompt, aligned: feature nodes by (layer, position counted
from the answer, matched feature), errors by (layer, position), tokens by position, logits by their token's
text; the pruned graphs' edit distance, spectral distance and node Jaccard; prompts clustered by how alike
the two models' graphs are; and a permutation test on the graphs as two samples."""

from __future__ import annotations

import numpy as np
import torch

from lib.features.attribution import attribute, metric_direction
from lib.features.influence import logit_weights, prune
from lib.methods.graph_distance import LabelledGraph, normalized_edit_distance


def pruned_graph(model, tc, data, i: int, node_threshold: float, edge_threshold: float, target_batch: int):
    """Prompt i's attribution graph (lib.features.attribution, as 10 builds it) and its pruning."""
    w_u = model.bridge.W_U.detach()
    tokens = data.clean[i, : int(data.lengths[i])]
    direction = metric_direction(w_u, data.correct[i].to(w_u.device), data.wrong[i].to(w_u.device))
    graph = attribute(model, tc, tokens, direction, batch_size=target_batch)
    weights = logit_weights(graph.adjacency.shape[0], graph.logit_probs)
    pruned = prune(
        graph.adjacency, weights, graph.n_features, graph.n_pos, graph.n_logits, node_threshold, edge_threshold
    )
    return graph, pruned


def labels(graph, tokenizer, feature_map: dict | None, model_tag: str) -> list:
    """Every node's alignment label. feature_map {layer: [d_sae] long}: this model's feature -> the other model's
    matched feature (-1: none); None for the model whose feature ids are the reference."""
    out: list = []
    last = graph.n_pos - 1
    for layer, pos, feature in graph.active[graph.selected].tolist():
        if feature_map is None:
            out.append(("feature", layer, last - pos, feature))
        else:
            partner = int(feature_map[layer][feature])
            out.append(
                ("feature", layer, last - pos, partner) if partner >= 0 else (model_tag, layer, last - pos, feature)
            )
    out += [("error", layer, last - pos) for layer in range(graph.n_layers) for pos in range(graph.n_pos)]
    out += [("token", last - pos) for pos in range(graph.n_pos)]
    out += [("logit", tokenizer.decode([t])) for t in graph.logit_tokens.tolist()]
    return out


def labelled(graph, pruned, node_labels: list) -> LabelledGraph:
    """The pruned graph on its labels: kept nodes and kept edges (source -> target)."""
    keep = pruned.node_mask.cpu()
    nodes = {node_labels[i] for i in torch.nonzero(keep).flatten().tolist()}
    targets, sources = torch.nonzero(pruned.edge_mask.cpu() & keep[:, None] & keep[None], as_tuple=True)
    edges = {(node_labels[s], node_labels[t]) for t, s in zip(targets.tolist(), sources.tolist())}
    return LabelledGraph.of(nodes, edges)


def alignment_matrix(graphs_a: list, graphs_b: list) -> np.ndarray:
    """[N, N] 1 - normalized edit distance between A's graph of prompt i and B's graph of prompt j."""
    return np.array([[1.0 - normalized_edit_distance(a, b) for b in graphs_b] for a in graphs_a])


def two_sample_test(graphs_a: list, graphs_b: list, n_permutations: int, seed: int) -> dict:
    """Are A's graphs further from B's than graphs of one model are from each other, beyond what swapping the
    models' labels prompt by prompt gives? Statistic over normalized edit distances d: mean d(A_i, B_j) over
    i != j minus the mean of the within-model means d(A_i, A_j), d(B_i, B_j) (an energy statistic; same-prompt
    pairs are left out so prompts differ in every term). Each permutation swaps A_i and B_i on random prompts."""
    n = len(graphs_a)
    every = graphs_a + graphs_b
    d = np.array([[normalized_edit_distance(x, y) for y in every] for x in every])  # [2N, 2N]
    off = ~np.eye(n, dtype=bool)

    def statistic(first: np.ndarray) -> float:  # first: [N] index of each prompt's "A" graph in every
        second = np.where(first < n, first + n, first - n)
        cross = d[np.ix_(first, second)][off].mean()
        within = (d[np.ix_(first, first)][off].mean() + d[np.ix_(second, second)][off].mean()) / 2
        return float(cross - within)

    base = np.arange(n)
    observed = statistic(base)
    rng = np.random.default_rng(seed)
    exceed = sum(
        statistic(np.where(rng.random(n) < 0.5, base + n, base)) >= observed - 1e-12 for _ in range(n_permutations)
    )
    return {
        "statistic": "mean cross-model - mean within-model normalized edit distance (different prompts)",
        "observed": observed,
        "n_permutations": n_permutations,
        "p_value": (1 + exceed) / (1 + n_permutations),
    }
