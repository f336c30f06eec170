"""Distances between two graphs whose nodes carry comparable labels (attribution graphs of two models after
their nodes are aligned): graph edit distance, spectral distance of the normalized Laplacian, node Jaccard;
and prompts clustered by how alike the two models' graphs are."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelledGraph:
    """Nodes named by labels unique within the graph; directed edges between them (source, target)."""

    nodes: frozenset
    edges: frozenset

    @classmethod
    def of(cls, nodes, edges) -> LabelledGraph:
        nodes, edges = frozenset(nodes), frozenset(edges)
        if not all(u in nodes and v in nodes for u, v in edges):
            raise ValueError("an edge names a node the graph does not have")
        return cls(nodes, edges)


def edit_distance(a: LabelledGraph, b: LabelledGraph) -> int:
    """Graph edit distance with unit costs (insert or delete one node or one edge) where a node may only be
    matched to the node of the same label: every node and edge present in one graph only is one edit."""
    return len(a.nodes ^ b.nodes) + len(a.edges ^ b.edges)


def normalized_edit_distance(a: LabelledGraph, b: LabelledGraph) -> float:
    """Edit distance over the edits that delete one graph and build the other (0: identical, 1: disjoint)."""
    total = len(a.nodes) + len(b.nodes) + len(a.edges) + len(b.edges)
    return edit_distance(a, b) / total if total else 0.0


def node_jaccard(a: LabelledGraph, b: LabelledGraph) -> float:
    union = a.nodes | b.nodes
    return len(a.nodes & b.nodes) / len(union) if union else 1.0


def laplacian_spectrum(nodes: list, edges) -> np.ndarray:
    """Ascending eigenvalues of the normalized Laplacian I - D^-1/2 A D^-1/2 of the undirected, unweighted
    graph on `nodes` (an isolated node's row is 0, as networkx's normalized_laplacian_matrix has it)."""
    index = {n: i for i, n in enumerate(nodes)}
    adjacency = np.zeros((len(nodes), len(nodes)))
    for u, v in edges:
        if u != v:
            adjacency[index[u], index[v]] = adjacency[index[v], index[u]] = 1.0
    degree = adjacency.sum(1)
    scale = np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)), 0.0)
    laplacian = np.diag((degree > 0).astype(float)) - scale[:, None] * adjacency * scale[None]
    return np.linalg.eigvalsh(laplacian) if len(nodes) else np.zeros(0)


def spectral_distance(a: LabelledGraph, b: LabelledGraph) -> float:
    """Euclidean distance between the sorted normalized-Laplacian spectra of the two graphs, each taken on the
    union of their nodes (a node one graph lacks is isolated there), so the spectra have equal length."""
    nodes = sorted(a.nodes | b.nodes, key=repr)
    return float(np.linalg.norm(laplacian_spectrum(nodes, a.edges) - laplacian_spectrum(nodes, b.edges)))


def distances(a: LabelledGraph, b: LabelledGraph) -> dict:
    return {
        "edit_distance": edit_distance(a, b),
        "edit_distance_normalized": normalized_edit_distance(a, b),
        "spectral_distance": spectral_distance(a, b),
        "node_jaccard": node_jaccard(a, b),
    }


def cluster(distance: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Average-linkage hierarchical clustering of items under a symmetric distance matrix [N, N]: (scipy's
    linkage matrix, each item's cluster 1..n_clusters)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    d = (distance + distance.T) / 2
    np.fill_diagonal(d, 0.0)
    tree = linkage(squareform(d, checks=False), method="average")
    return tree, fcluster(tree, t=n_clusters, criterion="maxclust")
