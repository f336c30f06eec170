"""Intervention engine invariants (DEFINITIONS.md, Patching an edge) and a slow one-receiver-at-a-time reference."""

import pytest
import torch

from lib.core.forward import answer_logits
from lib.core.graph import Graph, graph_of
from lib.core.patching import (
    EdgePatch,
    ablate_mask,
    ablation_values,
    as_sources,
    evaluate_mask,
    masked_answer_logits,
    receiver_hooks,
    source_hooks,
)
from tasks import TASKS


@pytest.fixture(scope="module")
def data(tiny):
    return TASKS["ioi"].build(tiny.tokenizer, 6, 0)


def test_graph_counts_gpt2_small():
    g = Graph(12, 12)
    assert len(g.nodes) == 158 and g.n_edges == 32491
    assert g.n_sources == 1 + 12 * 13 and g.n_receivers == 12 * 37 + 1
    assert len(g.edge_names) == g.n_edges == len(set(g.edge_names))
    for name in ("a5.h5->a9.h9<q>", "m0->logits", "input->a0.h1<k>", "a3.h0->m3"):
        assert name in g.edge_names
    for bad in ("m3->a3.h0<q>", "a9.h9->a5.h5<q>", "a3.h0->a3.h1<v>"):
        assert bad not in g.edge_names


def test_all_kept_is_clean_model(tiny, data):
    g = graph_of(tiny)
    clean = answer_logits(tiny, data.clean, data.answer_pos, 64)
    for ablation in ("resample", "mean", "zero"):
        kept = evaluate_mask(tiny, g, data, g.edge_exists, ablation=ablation, batch_size=4)
        torch.testing.assert_close(kept, clean, atol=1e-5, rtol=1e-5)


def test_all_ablated_resample_is_corrupted_model(tiny, data):
    g = graph_of(tiny)
    corrupt = answer_logits(tiny, data.corrupt, data.answer_pos, 64)
    none = evaluate_mask(tiny, g, data, torch.zeros_like(g.edge_exists), batch_size=4)
    torch.testing.assert_close(none, corrupt, atol=1e-4, rtol=1e-4)


def slow_reference(model, g, batch, ablation, ablate):
    """Fix receivers one at a time in forward order, each from a fresh forward pass, edge by edge."""
    fixed = {}  # (hook name, column index within hook or None) -> fixed input [B, P, D]
    rcv = [
        (name, c)
        for name, cols in receiver_hooks(g)
        for c in (range(cols.start, cols.stop) if isinstance(cols, slice) else [cols])
    ]

    def run():
        outs, inputs = {}, {}

        def save_src(rows):
            def hook(x, hook):
                for i, s in enumerate(range(rows.start, rows.stop)):
                    outs[s] = as_sources(x)[i]
                return x

            return hook

        def fix(name, cols):
            def hook(x, hook):
                x = x.clone()
                cs = range(cols.start, cols.stop) if isinstance(cols, slice) else [cols]
                for j, c in enumerate(cs):
                    inputs[c] = x[:, :, j] if x.dim() == 4 else x
                    if c in fixed:
                        if x.dim() == 4:
                            x[:, :, j] = fixed[c]
                        else:
                            x = fixed[c].clone()
                return x

            return hook

        hooks = [(n, save_src(r)) for n, r in source_hooks(g)] + [(n, fix(n, c)) for n, c in receiver_hooks(g)]
        logits = model.bridge.run_with_hooks(batch.clean, fwd_hooks=hooks)
        return logits, outs, inputs

    with torch.no_grad():
        for _name, c in rcv:
            _, outs, inputs = run()
            x = inputs[c].clone()
            for s in range(g.n_sources):
                if ablate[s, c]:
                    x = x - outs[s] + ablation[s]
            fixed[c] = x
        logits, _, _ = run()
    return logits[torch.arange(len(batch)), batch.answer_pos]


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
@pytest.mark.parametrize("kept_fraction", [0.6, 0.05])
def test_edge_set_matches_slow_reference(tiny, data, ablation, kept_fraction):
    g = graph_of(tiny)
    gen = torch.Generator().manual_seed(1)
    keep = (torch.rand(g.n_sources, g.n_receivers, generator=gen) < kept_fraction) & g.edge_exists
    ablate = ablate_mask(g, keep)
    values = ablation_values(tiny, g, data, ablation)
    fast = masked_answer_logits(tiny, g, data, values, ablate)
    slow = slow_reference(tiny, g, data, values, ablate)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    # and the intervention actually changed something
    assert (fast - answer_logits(tiny, data.clean, data.answer_pos, 64)).abs().max() > 1e-3


def test_mean_ablation_values_are_positionwise_means(tiny, data):
    from lib.core.patching import mean_outputs, source_outputs

    g = graph_of(tiny)
    vals = ablation_values(tiny, g, data, "mean")
    assert torch.equal(vals[:, 0], vals[:, -1])  # one mean, shared by every prompt
    outs = source_outputs(tiny, g, data.corrupt)  # [S, N, P, D]
    for p in range(data.clean.shape[1]):  # each position: the mean over the prompts that reach it
        reach = data.lengths > p
        torch.testing.assert_close(vals[:, 0, p], outs[:, reach, p].mean(1), atol=1e-5, rtol=1e-5)
    # batching the reference does not change the mean
    torch.testing.assert_close(mean_outputs(tiny, g, data, batch_size=2), vals[:, 0], atol=1e-5, rtol=1e-5)


def test_patching_from_the_kept_side_equals_the_ablated_side(tiny, data):
    """EdgePatch patches each receiver from the ablated or the kept edges (whichever is fewer): both forms
    agree on any mask, fractional ones included."""
    g = graph_of(tiny)
    gen = torch.Generator().manual_seed(4)
    ablate = torch.rand(g.n_sources, g.n_receivers, generator=gen) * g.edge_exists
    ablate[ablate < 0.5] = 0.0  # some edges kept, some fractional
    values = ablation_values(tiny, g, data, "resample")
    out = {}
    for mode in ("ablated", "kept", "auto"):
        with torch.no_grad():
            out[mode] = tiny.bridge.run_with_hooks(data.clean, fwd_hooks=EdgePatch(g, values, ablate, mode).hooks())
    torch.testing.assert_close(out["ablated"], out["kept"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["ablated"], out["auto"], atol=1e-4, rtol=1e-4)
    assert (out["ablated"] - tiny.bridge(data.clean)).abs().max() > 1e-3


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_many_circuits_per_pass_equal_one_circuit_per_pass(tiny, ablation):
    """masks_metric (several circuits per forward pass, a mask per row) equals evaluate_mask circuit by circuit."""
    from lib.core.graph import graph_of
    from lib.core.metrics import data_metric
    from lib.core.patching import evaluate_mask, masks_metric
    from tasks import TASKS

    g, data = graph_of(tiny), TASKS["ioi"].build(tiny.tokenizer, 7, 2)
    rng = torch.Generator().manual_seed(0)
    keeps = [torch.rand(g.n_sources, g.n_receivers, generator=rng) < p for p in (0.0, 0.2, 0.5, 0.8, 1.0)]
    many = masks_metric(tiny, g, data, keeps, ablation, batch_size=4, rows_per_pass=8)  # 2 circuits per pass
    for c, keep in enumerate(keeps):
        one = data_metric(evaluate_mask(tiny, g, data, keep, ablation, batch_size=4), data)
        assert torch.allclose(many[c], one, atol=1e-4, rtol=1e-4), (ablation, c)
