"""Shi et al.'s tests: statistics and p-values by hand, the permutation null, random paths, the constructed
cases on the toy model (an empty circuit is not equivalent; the full graph is), and 22 end to end."""

import math

import numpy as np
import pandas as pd
import torch
from conftest import run_cli

from lib.core.graph import Graph
from lib.methods import hypothesis_tests as ht


def test_holm_by_hand():
    assert np.allclose(ht.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    assert np.allclose(ht.holm([0.5, 0.6]), [1.0, 1.0])


def test_equivalence_p_value_by_hand():
    full = np.zeros(10)
    circuit = np.r_[np.ones(9), -np.ones(1)]  # the circuit beats the model on 9 of 10 prompts
    r = ht.equivalence(full, circuit, epsilon=0.1, tie=1e-9)
    # |k/10 - 1/2| >= 0.4 for k in {0, 1, 9, 10}, K ~ Binomial(10, 0.6)
    hand = sum(math.comb(10, k) * 0.6**k * 0.4 ** (10 - k) for k in (0, 1, 9, 10))
    assert r["statistic"] == 0.9 and r["n"] == 10 and math.isclose(r["p_value"], hand)
    same = ht.equivalence(full, full + 1e-12, 0.1, tie=1e-9)
    assert same["p_value"] == 1.0 and same["ties"] == 10


def test_independence_permutation_null():
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    dependent = ht.independence(x, x**2 + 0.05 * rng.normal(size=60), 300, seed=1)
    independent = ht.independence(x, rng.normal(size=60), 300, seed=1)
    assert dependent["p_value"] < 0.01 < independent["p_value"]
    # the vectorised null equals HSIC recomputed on the same permutations
    y = rng.normal(size=20)
    r = ht.independence(x[:20], y, 5, seed=3)
    perm_rng = np.random.default_rng(3)
    perms = [perm_rng.permutation(20) for _ in range(5)]
    assert np.allclose(r["null"], [ht.hsic(x[:20], y[p]) for p in perms])
    assert math.isclose(r["statistic"], ht.hsic(x[:20], y))


def test_random_paths_walk_as_shi_et_al_code():
    """circuitry's _sample_path: from input, a uniformly chosen outgoing edge at each node until logits."""
    g = Graph(4, 3)
    paths = ht.RandomPaths(g, np.random.default_rng(0))
    for _ in range(200):
        edges = [f"{g.sources[s]}->{g.receivers[r]}" for s, r in paths.path()]
        for e in edges:
            g.edge_index(e)  # raises for an edge the graph does not have
        chain = [e.split("->")[0] for e in edges] + ["logits"]
        assert chain[0] == "input" and [e.split("->")[1].split("<")[0] for e in edges] == chain[1:]
    # one layer, one head, by hand: input feeds q, k, v, m0, logits; the head feeds m0, logits; m0 feeds logits.
    # E[length] = 1/5 * 1 (input->logits) + 1/5 * 2 (via m0) + 3/5 * (1/2 * 2 + 1/2 * 3) (via the head) = 2.1
    one = ht.RandomPaths(Graph(1, 1), np.random.default_rng(1))
    lengths = np.array([len(one.path()) for _ in range(20000)])
    assert abs(lengths.mean() - 2.1) < 0.03 and abs((lengths == 1).mean() - 0.2) < 0.01


def test_random_circuits_are_connected_and_at_least_the_size():
    from lib.methods.area import prune_dangling

    g = Graph(4, 4)
    paths = ht.RandomPaths(g, np.random.default_rng(0))
    empty = torch.zeros_like(g.edge_exists)
    for n in (1, 9, 40, 95):
        r = paths.grow(empty, n)
        assert int(r.sum()) >= n and torch.equal(prune_dangling(g, r), r)  # every edge on an input->logits path
    base = paths.grow(empty, 5)
    inflated = paths.grow(base, 1)
    assert bool((inflated & ~base).any()) and torch.equal(inflated & base, base)


def test_empty_circuit_is_not_equivalent_and_the_full_graph_is(toy):
    from lib.core.graph import graph_of
    from lib.methods.faithfulness import Evaluator
    from tasks import TASKS

    g = graph_of(toy)
    ev = Evaluator(toy, g, TASKS["ioi"].build(toy.tokenizer, 40, 0), "resample", 20)
    tie = 1e-5 * (1 + float(np.abs(ev.clean).max()))
    empty = ht.equivalence(ev.clean, ev.metric(torch.zeros_like(g.edge_exists)), 0.1, tie)
    full = ht.equivalence(ev.clean, ev.metric(g.edge_exists), 0.1, tie)
    assert empty["p_value"] < 0.05 and empty["statistic"] < 0.5  # rejected: the corrupted model loses
    assert full["p_value"] == 1.0 and full["n"] == 0  # every prompt a tie: not rejected
    # sufficiency: the full graph is at distance 0, no random circuit of its size can beat it
    suf = ht.sufficiency(ev.metric, g, g.edge_exists, ev.clean, 5, 0.9, seed=0)
    assert suf["circuit_distance"] < 1e-8 and suf["statistic"] == 1.0


def test_hypothesis_tests_end_to_end(tmp_path):
    r = run_cli(
        "22_hypothesis_tests.py",
        "--tasks",
        "ioi",
        "greater-than",
        "--model",
        "toy",
        "--n-prompts",
        "8",
        "--n-random",
        "6",
        "--n-permutations",
        "50",
        "--max-edges",
        "3",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    (run,) = (tmp_path / "22_hypothesis_tests").iterdir()
    names = {p.name for p in run.iterdir()}
    assert {"tests.csv", "minimality_edges.csv", "headline.csv", "run.json", "dataset.csv"} <= names
    assert {"null_ioi.png", "null_greater-than.png"} <= names
    tests = pd.read_csv(run / "tests.csv")
    assert len(tests) == 8 and set(tests.test) == {"equivalence", "independence", "minimality", "sufficiency"}
    assert ((tests.p_value >= 0) & (tests.p_value <= 1) & (tests.p_value_holm >= tests.p_value)).all()
    assert (tests.rejected == (tests.p_value_holm < 0.05)).all()
    r = run_cli(
        "22_hypothesis_tests.py", "--tasks", "ioi", "--model", "toy", "--epsilon", "0.7", "--out", str(tmp_path)
    )
    assert r.returncode == 2 and "--epsilon must be strictly between 0 and 0.5" in r.stderr


def test_a_circuit_of_every_edge_is_refused_in_one_line(tmp_path):
    """Minimality cannot add an edge to it (the old code looped for ever drawing paths with nothing new)."""
    from lib.core.graph import Graph
    from lib.io.circuit_json import Circuit

    g = Graph(4, 4)
    Circuit("toy", "ioi", "all", {}, {e: 0.0 for e in g.edge_names}).save(tmp_path / "all.json", g)
    r = run_cli(
        "22_hypothesis_tests.py",
        "--tasks",
        "ioi",
        "--model",
        "toy",
        "--n-prompts",
        "6",
        "--circuit",
        str(tmp_path / "all.json"),
        "--out",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2 and "the circuit holds every edge of the model" in r.stderr, r.stderr
    paths = ht.RandomPaths(g, np.random.default_rng(0))
    assert torch.equal(paths.grow(torch.zeros_like(g.edge_exists), g.n_edges), g.edge_exists)
