"""The definitions 11_compare_models.py rests on, against independent references: correlations (numpy),
Hungarian matching (a brute force over permutations), ridge (numpy least squares), graph edit distance and
the normalized Laplacian (networkx), on small cases checked by hand."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
import torch

from lib.methods import alignment, graph_distance


def test_correlations_equal_numpy_and_dead_columns_are_zero():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 4, generator=gen), torch.randn(50, 3, generator=gen)
    a[:, 2] = 0.0  # a dead feature
    corr, alive_a, alive_b = alignment.correlations(a, b)
    with np.errstate(invalid="ignore"):  # numpy's own nan for the dead column
        full = np.corrcoef(a.numpy().T.astype(np.float64), b.numpy().T.astype(np.float64))
    live = [0, 1, 3]
    np.testing.assert_allclose(corr[live], full[live][:, 4:], atol=1e-12)
    assert (corr[2] == 0).all() and alive_a.tolist() == [True, True, False, True] and alive_b.all()


def test_hungarian_matching_equals_brute_force_and_recovers_a_permutation():
    rng = np.random.default_rng(1)
    corr = rng.uniform(-1, 1, (5, 5))
    alive = np.ones(5, bool)
    m = alignment.match(corr, alive, alive)
    best = max(itertools.permutations(range(5)), key=lambda p: sum(corr[i, p[i]] for i in range(5)))
    assert sorted(map(tuple, m.pairs.tolist())) == [(i, best[i]) for i in range(5)]
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(2)).relu()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    corr, alive_a, alive_b = alignment.correlations(x, x[:, perm])
    m = alignment.match(corr, alive_a, alive_b)
    # B's column j is A's feature perm[j]: matching pairs A feature perm[j] with B feature j
    assert {(int(i), int(j)) for i, j in m.pairs} == {(int(perm[j]), j) for j in range(6)}
    np.testing.assert_allclose(m.pair_correlation, 1.0, atol=1e-12)


def test_splits_and_merges_by_hand():
    # A feature 0 is the best partner of B features 0 and 1 (a split); A features 1 and 2 both prefer B feature 2
    corr = np.array([[0.9, 0.8, 0.1], [0.1, 0.2, 0.7], [0.0, 0.1, 0.6]])
    m = alignment.match(corr, np.ones(3, bool), np.ones(3, bool))
    assert m.best_a.tolist() == [0, 0, 1] and m.best_b.tolist() == [0, 2, 2]
    counts = m.splits_and_merges(0.5)
    assert counts == {
        "splits": 1,
        "features_in_splits": 2,
        "merges": 1,
        "features_in_merges": 2,
        "mutual_best_partners": 2,  # (0, 0) and (1, 2)
    }
    assert m.splits_and_merges(0.75)["merges"] == 0  # A feature 2's partner (0.6) no longer counts


def test_ridge_is_least_squares_at_alpha_0_and_recovers_a_rotation():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, 8, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    y = x @ q + 0.5
    fit = alignment.ridge(x, y, 0.0)
    torch.testing.assert_close(fit.weight, q, atol=1e-9, rtol=0)
    torch.testing.assert_close(fit.bias, torch.full((8,), 0.5, dtype=torch.float64), atol=1e-9, rtol=0)
    assert alignment.r_squared(y, fit(x)) == pytest.approx(1.0, abs=1e-12)
    noisy = y + torch.randn(300, 8, generator=gen, dtype=torch.float64)
    design = np.hstack([x.numpy(), np.ones((300, 1))])
    reference = np.linalg.lstsq(design, noisy.numpy(), rcond=None)[0]
    fit = alignment.ridge(x, noisy, 0.0)
    np.testing.assert_allclose(fit.weight.numpy(), reference[:8], atol=1e-9)
    residual = noisy.numpy() - design @ reference
    expected = 1 - (residual**2).sum() / ((noisy.numpy() - noisy.numpy().mean(0)) ** 2).sum()
    assert alignment.r_squared(noisy, fit(x)) == pytest.approx(expected, abs=1e-12)
    assert alignment.ridge(x, noisy, 10.0).weight.norm() < fit.weight.norm()  # the penalty shrinks


def _nx(graph: graph_distance.LabelledGraph) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from((n, {"label": n}) for n in graph.nodes)
    g.add_edges_from(graph.edges)
    return g


CASES = [
    ({"a", "b", "c"}, {("a", "b"), ("b", "c")}, {"a", "b", "d"}, {("a", "b"), ("a", "d")}),
    ({"a", "b"}, {("a", "b")}, {"a", "b"}, {("b", "a")}),
    ({"x"}, set(), {"y", "z"}, {("y", "z")}),
    ({"a", "b", "c", "d"}, {("a", "b"), ("b", "c"), ("c", "d")}, {"a", "b", "c", "d"}, {("a", "b"), ("b", "c")}),
]


@pytest.mark.parametrize("nodes_a, edges_a, nodes_b, edges_b", CASES)
def test_edit_distance_equals_networkx_with_label_preserving_substitution(nodes_a, edges_a, nodes_b, edges_b):
    a, b = graph_distance.LabelledGraph.of(nodes_a, edges_a), graph_distance.LabelledGraph.of(nodes_b, edges_b)
    reference = nx.graph_edit_distance(
        _nx(a), _nx(b), node_subst_cost=lambda u, v: 0.0 if u["label"] == v["label"] else 1e6
    )
    assert graph_distance.edit_distance(a, b) == reference


def test_edit_distance_by_hand_and_normalized():
    a = graph_distance.LabelledGraph.of({"a", "b", "c"}, {("a", "b"), ("b", "c")})
    b = graph_distance.LabelledGraph.of({"a", "b", "d"}, {("a", "b"), ("a", "d")})
    # delete c, insert d (2 nodes); delete b->c, insert a->d (2 edges)
    assert graph_distance.edit_distance(a, b) == 4
    assert graph_distance.normalized_edit_distance(a, b) == 4 / 10
    assert graph_distance.node_jaccard(a, b) == 2 / 4
    assert graph_distance.distances(a, a)["edit_distance"] == 0


@pytest.mark.parametrize("nodes_a, edges_a, nodes_b, edges_b", CASES)
def test_spectral_distance_equals_networkx_normalized_laplacian(nodes_a, edges_a, nodes_b, edges_b):
    a, b = graph_distance.LabelledGraph.of(nodes_a, edges_a), graph_distance.LabelledGraph.of(nodes_b, edges_b)
    union = sorted(a.nodes | b.nodes)

    def spectrum(g):
        u = nx.Graph()
        u.add_nodes_from(union)
        u.add_edges_from(g.edges)
        return np.sort(np.linalg.eigvalsh(nx.normalized_laplacian_matrix(u, nodelist=union).toarray()))

    expected = np.linalg.norm(spectrum(a) - spectrum(b))
    assert graph_distance.spectral_distance(a, b) == pytest.approx(expected, abs=1e-12)


def test_spectral_distance_by_hand():
    # a path a-b-c has normalized Laplacian eigenvalues 0, 1, 2; three isolated nodes have 0, 0, 0
    path = graph_distance.LabelledGraph.of({"a", "b", "c"}, {("a", "b"), ("b", "c")})
    empty = graph_distance.LabelledGraph.of({"a", "b", "c"}, set())
    assert graph_distance.spectral_distance(path, empty) == pytest.approx(np.sqrt(1 + 4))


def test_clusters_separate_two_blocks():
    d = np.array([[0, 0.1, 0.9, 0.8], [0.1, 0, 0.85, 0.9], [0.9, 0.85, 0, 0.05], [0.8, 0.9, 0.05, 0]])
    _, labels = graph_distance.cluster(d, 2)
    assert labels[0] == labels[1] != labels[2] == labels[3]


def test_ridge_cv_chooses_the_alpha_a_plain_loop_over_folds_chooses():
    """ridge_cv (one eigendecomposition per fold, every alpha at once) against k-fold cross-validation written
    out with ridge() itself."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(120, 10, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(10, 4, generator=gen, dtype=torch.float64) + 3 * torch.randn(
        120, 4, generator=gen, dtype=torch.float64
    )
    edges = np.linspace(0, 120, 6).round().astype(int)
    errors = []
    for alpha in alignment.ALPHA_GRID:
        total = 0.0
        for f in range(5):
            test = torch.zeros(120, dtype=torch.bool)
            test[edges[f] : edges[f + 1]] = True
            fit = alignment.ridge(x[~test], y[~test], alpha)
            total += float(((y[test] - fit(x[test])) ** 2).sum())
        errors.append(total)
    chosen = alignment.ridge_cv(x, y)
    assert chosen.alpha == alignment.ALPHA_GRID[int(np.argmin(errors))]
    assert chosen.alpha > alignment.ALPHA_GRID[0]  # noisy targets: some shrinkage pays
    torch.testing.assert_close(chosen.weight, alignment.ridge(x, y, chosen.alpha).weight)


def test_permutation_test_equals_a_loop_over_swaps():
    """The vectorized permutation test against one Spearman per permutation (scipy), the same swaps."""
    from scipy.stats import spearmanr

    from lib.compare.circuits import permutation_test
    from lib.core.graph import Graph

    graph = Graph(2, 2, False)
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(12, graph.n_sources, graph.n_receivers, generator=gen)
    b = a + 0.8 * torch.randn(12, graph.n_sources, graph.n_receivers, generator=gen)
    got = permutation_test(graph, a, b, 50, seed=3)
    e = graph.edge_exists
    xa, xb = a[:, e].double(), b[:, e].double()
    observed = 1 - spearmanr(xa.mean(0), xb.mean(0)).statistic
    swaps = torch.rand(50, 12, generator=torch.Generator().manual_seed(3)) < 0.5
    exceed = 0
    for swap in swaps:
        s = swap[:, None]
        x, y = torch.where(s, xb, xa).mean(0), torch.where(s, xa, xb).mean(0)
        exceed += (1 - spearmanr(x, y).statistic) >= observed - 1e-12
    assert got["observed"] == pytest.approx(observed, abs=1e-12)
    assert got["p_value"] == (1 + exceed) / 51
