"""Causal scrubbing: identities (full hypothesis = model, empty = model on the drawn prompt), draws that agree
on features, and the batched engine against a slow recursive evaluation of the treeified graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.core.forward import answer_logits
from lib.core.graph import Graph, graph_of
from lib.core.metrics import kl_divergence
from lib.core.patching import receiver_hooks, source_outputs
from lib.methods import hypotheses as H
from lib.methods.scrubbing import Hypothesis, Pool, agreeing_draws, draw, other_draws, scrubbed_logits
from tasks import TASKS


@pytest.fixture(scope="module")
def sva_pool(tiny):
    data = TASKS["sva"].build(tiny.tokenizer, 80, 5)
    pool = Pool.of(data, TASKS["sva"])
    pool.positions = {"end": data.answer_pos, "second": torch.ones(len(data), dtype=torch.long)}
    return pool


def test_full_hypothesis_is_the_model(tiny, sva_pool):
    g = graph_of(tiny)
    ev = np.arange(10)
    hyp = H.full(g)
    logits, stats = scrubbed_logits(tiny, g, sva_pool, hyp, draw(g, sva_pool, hyp, 0), ev, batch_size=7)
    full = answer_logits(tiny, sva_pool.data.clean[ev], sva_pool.data.answer_pos[ev], 16)
    torch.testing.assert_close(logits, full, atol=1e-4, rtol=1e-4)
    assert kl_divergence(full, logits).max() < 1e-8
    assert stats["plain_rows"] > 0  # the random draws were made and cancelled exactly


def test_empty_hypothesis_is_the_model_on_a_random_other_prompt(tiny, sva_pool):
    g = graph_of(tiny)
    ev = np.arange(12)
    hyp = H.baseline(g)
    draws = draw(g, sva_pool, hyp, 0, replicate=2)
    logits, _ = scrubbed_logits(tiny, g, sva_pool, hyp, draws, ev)
    other = draws.other[g.logits_receiver][ev]
    assert (other != ev).all()
    ref = answer_logits(tiny, sva_pool.data.clean[other], sva_pool.data.answer_pos[other], 16)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)


def test_draws_agree_on_features_and_structure(toy_tokenizer):
    data = TASKS["ioi"].build(toy_tokenizer, 600, 2)
    pool = Pool.of(data, TASKS["ioi"])
    rng = np.random.default_rng(0)
    info = data.info
    for feature in (("io_name",), ("s_name",), ("io_name", "s_name")):
        drawn = agreeing_draws(pool.keys(feature), rng)
        for f in feature + ("order", "template"):
            assert (info[f].to_numpy()[drawn] == info[f].to_numpy()).all()
        assert (data.lengths.numpy()[drawn] == data.lengths.numpy()).all()
    moved = drawn = agreeing_draws(pool.keys(("s_name",)), rng)
    assert (moved != np.arange(len(data))).any()  # some draws are other prompts
    other = other_draws(pool.keys(()), rng)
    alone = np.array([(pool.structure == k).sum() == 1 for k in pool.structure])
    assert (other[~alone] != np.arange(len(data))[~alone]).all()
    assert (pool.structure[other] == pool.structure).all()
    # the tables a hypothesis uses: every circuit node's draw agrees on its features
    g = Graph(2, 4)
    keep = g.edge_exists.clone()
    hyp = Hypothesis("h", keep, {"a0.h1": ("io_name",), "a1.h2": ("s_name",)})
    draws = draw(g, pool, hyp, 3)
    for node, (f,) in hyp.features.items():
        d = draws.agree[g.source_index[node]]
        assert (info[f].to_numpy()[d] == info[f].to_numpy()).all()
    assert (draws.agree[g.source_index["a0.h0"]] == np.arange(len(data))).all()  # whole prompt: itself


def test_ioi_positions(toy_tokenizer):
    data = TASKS["ioi"].build(toy_tokenizer, 30, 0)
    positions = TASKS["ioi"].positions
    assert positions is not None
    pos = positions(data)
    rows = torch.arange(len(data))
    s = data.wrong[:, 0]
    assert (data.clean[rows, pos["s2"]] == s).all()
    assert (data.clean[rows, pos["s1+1"] - 1] == s).all() and (pos["s1+1"] < pos["s2"]).all()
    assert (pos["end"] == data.answer_pos).all()


def slow_scrub(model, graph, pool, hyp, draws, i: int) -> torch.Tensor:
    """The treeified graph evaluated recursively: one forward pass per instance, every receiver input summed
        source by source (circuit edges from the parent's instance, others from the receiver's random prompt) plus
    the attention output biases, which belong to no source."""
    keep = hyp.keep & graph.edge_exists
    W = pool.data.clean.shape[1]
    plain, memo = {}, {}
    b_O = model.bridge.b_O.detach()  # [L, D]: attention output biases, part of no head's output

    def bias(c):  # the attention biases written before receiver c reads
        name = graph.receivers[c]
        layers = graph.n_layers if name == "logits" else int(name[1:].split(".")[0]) + name.startswith("m")
        return b_O[:layers].sum(0)

    def plain_out(k):  # [S, W, D]
        if k not in plain:
            plain[k] = source_outputs(model, graph, pool.data.clean[k : k + 1].to(model.device))[:, 0]
        return plain[k]

    def mask(node, j):
        cls = hyp.positions.get(node)
        return torch.ones(W, 1) if cls is None else (torch.arange(W) == pool.positions[cls][j]).float()[:, None]

    def instance(node, j):
        if (node, j) in memo:
            return memo[(node, j)]
        if node == "input":
            return plain_out(j)[0]
        inputs = {}
        for c in graph.node_receivers(node):
            k = int(draws.other[c][j])
            total = bias(c).expand(W, -1).clone()
            for u in range(graph.n_sources):
                if not graph.edge_exists[u, c]:
                    continue
                if keep[u, c]:
                    m = mask(graph.sources[u], j)
                    total += m * instance(graph.sources[u], int(draws.agree[u][j])) + (1 - m) * plain_out(k)[u]
                else:
                    total += plain_out(k)[u]
            inputs[c] = total
        hooks, captured = [], {}
        for name, cols in receiver_hooks(graph):
            cols = list(range(cols.start, cols.stop)) if isinstance(cols, slice) else [cols]

            def set_inputs(x, hook, cols=cols):
                x = x.clone()
                for c in cols:
                    if c in inputs:
                        if x.dim() == 4:
                            x[0, :, c - cols[0]] = inputs[c]
                        else:
                            x[0] = inputs[c]
                return x

            hooks.append((name, set_inputs))
        if node.startswith("a"):
            l, h = (int(x) for x in node[1:].split(".h"))
            hooks.append((f"blocks.{l}.attn.hook_result", lambda x, hook: captured.update(out=x[0, :, h].clone())))
        elif node.startswith("m"):
            hooks.append((f"blocks.{node[1:]}.hook_mlp_out", lambda x, hook: captured.update(out=x[0].clone())))
        with torch.no_grad():
            logits = model.bridge.run_with_hooks(pool.data.clean[j : j + 1].to(model.device), fwd_hooks=hooks)
        memo[(node, j)] = logits[0] if node == "logits" else captured["out"]
        return memo[(node, j)]

    return instance("logits", i)[int(pool.data.answer_pos[i])]


def test_batched_scrubbing_equals_slow_recursive_reference(tiny, sva_pool):
    g = graph_of(tiny)
    gen = torch.Generator().manual_seed(1)
    keep = (torch.rand(g.n_sources, g.n_receivers, generator=gen) < 0.35) & g.edge_exists
    features = {"a0.h0": ("number",), "a0.h2": ("number",), "a1.h1": ("number",), "m0": ("number",)}
    positions = {"a0.h2": "end", "a1.h1": "second"}
    hyp = Hypothesis("test", keep, features, positions)
    draws = draw(g, sva_pool, hyp, 7)
    ev = np.arange(5)
    fast, stats = scrubbed_logits(tiny, g, sva_pool, hyp, draws, ev, batch_size=16)
    assert stats["agreeing_draws_moved"] > 0 and stats["scrub_rows"] > len(ev)  # the tree branches to other prompts
    slow = torch.stack([slow_scrub(tiny, g, sva_pool, hyp, draws, int(i)) for i in ev]).float()
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    # and it differs from the full model, so the comparison is not vacuous
    full = answer_logits(tiny, sva_pool.data.clean[ev], sva_pool.data.answer_pos[ev], 16)
    assert (fast - full).abs().max() > 1e-2
