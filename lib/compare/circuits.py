"""Head-level circuits of two models of one graph shape: EAP-IG scores of every edge in both, how alike they
rank (Spearman) and how their top-k circuits overlap (edge and node Jaccard) along k and layer by layer, the
same numbers within each model (disjoint prompt halves, bootstrap resamples), and a permutation test."""

from __future__ import annotations

import numpy as np
import torch

from lib.core.graph import Graph, layer_head
from lib.methods.comparison import jaccard, node_jaccard
from lib.methods.faithfulness import top_k_mask


def shape_difference(graph_a: Graph, graph_b: Graph) -> str | None:
    """Why two graphs cannot be compared edge by edge (None when their sources and receivers are the same)."""
    if graph_a.sources == graph_b.sources and graph_a.receivers == graph_b.receivers:
        return None
    return (
        f"the models' graphs differ ({graph_a.n_layers} layers x {graph_a.n_heads} heads against "
        f"{graph_b.n_layers} x {graph_b.n_heads}): head-level comparison needs one graph shape"
    )


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last dimension (ties share their mean rank), float64."""
    from scipy.stats import rankdata

    return torch.from_numpy(rankdata(x.double().cpu().numpy(), axis=-1))


def rank_correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman correlation along the last dimension of x and y [..., E] (nan where either is constant)."""
    ra, rb = _ranks(x), _ranks(y)
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    denominator = ra.norm(dim=-1) * rb.norm(dim=-1)
    return torch.where(denominator > 0, (ra * rb).sum(-1) / denominator.clamp_min(1e-300), float("nan"))


def spearman(graph: Graph, a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """Spearman correlation of two [S, R] edge-score tensors over the existing edges (and `where`, [S, R] bool)."""
    keep = graph.edge_exists if where is None else graph.edge_exists & where
    return float(rank_correlation(a[keep], b[keep])) if int(keep.sum()) >= 2 else float("nan")


def prompt_halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint halves of n prompts (indices), drawn by seed: the within-model comparisons' split."""
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    return perm[: n // 2], perm[n // 2 :]


def node_layer(node: str, n_layers: int) -> int:
    """The layer a node belongs to: heads and MLPs their block, the input -1, the logits n_layers."""
    if node == "logits":
        return n_layers
    return layer_head(node)[0]


def along_k(graph: Graph, mean_a: torch.Tensor, mean_b: torch.Tensor, grid: list[int]) -> list[dict]:
    """Edge and node Jaccard of the two models' top-k circuits (by |mean score|) at each k of grid."""
    rows = []
    for k in grid:
        keep_a, keep_b = top_k_mask(graph, mean_a, k), top_k_mask(graph, mean_b, k)
        rows.append(
            {"k": k, "edge_jaccard": jaccard(keep_a, keep_b), "node_jaccard": node_jaccard(graph, keep_a, keep_b)}
        )
    return rows


def receiver_layers(graph: Graph) -> torch.Tensor:
    """[S, R] long: the layer each edge's receiver belongs to (n_layers for the logits)."""
    layers = torch.tensor([graph.receiver_layer(r) for r in range(graph.n_receivers)])
    return layers[None].expand(graph.n_sources, -1)


def by_layer(graph: Graph, mean_a: torch.Tensor, mean_b: torch.Tensor, k: int) -> list[dict]:
    """Per layer l (0..n_layers, the last being the logits): Spearman of the scores of edges into l, edge
    Jaccard of the top-k circuits' edges into l, node Jaccard of their nodes in l."""
    keep_a, keep_b = top_k_mask(graph, mean_a, k), top_k_mask(graph, mean_b, k)
    layer_of = receiver_layers(graph)
    nodes_a = {n for n in graph.nodes_of(keep_a)}
    nodes_b = {n for n in graph.nodes_of(keep_b)}
    rows = []
    for layer in range(graph.n_layers + 1):
        into = layer_of == layer
        na = {n for n in nodes_a if node_layer(n, graph.n_layers) == layer}
        nb = {n for n in nodes_b if node_layer(n, graph.n_layers) == layer}
        rows.append(
            {
                "layer": layer,
                "score_spearman": spearman(graph, mean_a, mean_b, into),
                "edge_jaccard": jaccard(keep_a & into, keep_b & into),
                "node_jaccard": len(na & nb) / len(na | nb) if na | nb else 1.0,
            }
        )
    return rows


def summary(graph: Graph, mean_a: torch.Tensor, mean_b: torch.Tensor, k: int) -> dict:
    keep_a, keep_b = top_k_mask(graph, mean_a, k), top_k_mask(graph, mean_b, k)
    return {
        "score_spearman": spearman(graph, mean_a, mean_b),
        "edge_jaccard": jaccard(keep_a, keep_b),
        "node_jaccard": node_jaccard(graph, keep_a, keep_b),
    }


def noise_baselines(
    graph: Graph, items_a: torch.Tensor, items_b: torch.Tensor, k: int, n_resamples: int, seed: int
) -> list[dict]:
    """The summary numbers (Spearman, edge and node Jaccard at k) between: the models on all prompts; each model
    on two disjoint halves of the prompts; the models on disjoint halves (A's first half against B's second, the
    fair cross-model match for the within-model halves); and pairs of bootstrap resamples of each model's
    prompts (n_resamples pairs: mean and 2.5 / 97.5 % points). items: per-prompt scores [N, S, R]."""
    n = items_a.shape[0]
    first, second = prompt_halves(n, seed)

    def mean(items, idx):
        return items[idx].double().mean(0)

    rows = [
        {
            "comparison": "A vs B",
            "prompts": n,
            **summary(graph, mean(items_a, slice(None)), mean(items_b, slice(None)), k),
        }
    ]
    for label, x, y in (
        ("A half vs A other half", (items_a, first), (items_a, second)),
        ("B half vs B other half", (items_b, first), (items_b, second)),
        ("A half vs B other half", (items_a, first), (items_b, second)),
    ):
        rows.append({"comparison": label, "prompts": n // 2, **summary(graph, mean(*x), mean(*y), k)})
    rng = np.random.default_rng(seed + 1)
    for label, items in (("A resample vs A resample", items_a), ("B resample vs B resample", items_b)):
        draws = [
            summary(
                graph,
                mean(items, torch.from_numpy(rng.integers(0, n, n))),
                mean(items, torch.from_numpy(rng.integers(0, n, n))),
                k,
            )
            for _ in range(n_resamples)
        ]
        row: dict = {"comparison": label, "prompts": n}
        for key in draws[0]:
            values = np.array([d[key] for d in draws], dtype=float)
            row[key] = float(np.nanmean(values))
            row[f"{key}_low"], row[f"{key}_high"] = (float(q) for q in np.nanpercentile(values, [2.5, 97.5]))
        rows.append(row)
    return rows


def permutation_test(
    graph: Graph, items_a: torch.Tensor, items_b: torch.Tensor, n_permutations: int, seed: int
) -> dict:
    """Do the models rank edges more differently than prompt resampling explains? Statistic: 1 - Spearman of the
    two models' mean scores. Null: on each prompt the two models' scores are exchangeable, so each permutation
    swaps the models' scores on a random half of the prompts (each prompt independently, probability 1/2).
    p = (1 + permutations at least as large) / (1 + n_permutations)."""
    exists = graph.edge_exists
    a, b = items_a[:, exists].double(), items_b[:, exists].double()  # [N, E]

    def statistics(swap: torch.Tensor) -> torch.Tensor:  # swap [P, N] bool -> [P] statistic per permutation
        w = swap.double()
        mean_x = ((1 - w) @ a + w @ b) / a.shape[0]  # [P, E]: A's scores, B's where swapped
        mean_y = ((1 - w) @ b + w @ a) / a.shape[0]
        return 1.0 - rank_correlation(mean_x, mean_y).nan_to_num(0.0)  # every permutation at once

    observed = float(statistics(torch.zeros(1, a.shape[0], dtype=torch.bool))[0])
    gen = torch.Generator().manual_seed(seed)
    swaps = torch.rand(n_permutations, a.shape[0], generator=gen) < 0.5
    exceed = int((statistics(swaps) >= observed - 1e-12).sum())
    return {
        "statistic": "1 - spearman(mean scores)",
        "observed": observed,
        "n_permutations": n_permutations,
        "p_value": (1 + exceed) / (1 + n_permutations),
    }


def circuit_sources(graph: Graph, keep: torch.Tensor) -> torch.Tensor:
    """[S] bool: the sources with a kept outgoing edge (the circuit's writing nodes)."""
    return (keep & graph.edge_exists).any(1)
