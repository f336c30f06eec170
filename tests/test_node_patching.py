"""Node patching equals ablating all of a node's outgoing edges; residual patching identities."""

import torch

from lib.core.graph import graph_of
from lib.core.metrics import data_metric
from lib.core.patching import evaluate_mask
from lib.methods.node_patching import Component, data_patch_metrics, heads_and_mlps, patch_metrics, residual_positions
from tasks import TASKS


def test_noise_patch_equals_edge_engine(tiny):
    data = TASKS["ioi"].build(tiny.tokenizer, 5, 2)
    g = graph_of(tiny)
    comps = heads_and_mlps(tiny.n_layers, tiny.n_heads)
    patched = patch_metrics(tiny, data, comps, "noise", per_pass=3)  # [C, B]
    for c, row in zip(comps, patched):
        src = g.head_source(c.layer, c.index) if c.kind == "head" else g.mlp_source(c.layer)
        keep = g.edge_exists.clone()
        keep[src] = False  # every outgoing edge of the node ablated (resample = corrupted value)
        expected = data_metric(evaluate_mask(tiny, g, data, keep, "resample", batch_size=5), data)
        torch.testing.assert_close(row.double(), expected.double(), atol=1e-4, rtol=1e-4)


def test_residual_identities(tiny):
    data = TASKS["sva"].build(tiny.tokenizer, 6, 0)
    data = data.subset(torch.nonzero(data.lengths == data.lengths[0]).flatten())
    P = int(data.lengths[0])
    comps = residual_positions(tiny.n_layers, P)
    clean = data_metric(evaluate_mask(tiny, graph_of(tiny), data, graph_of(tiny).edge_exists), data)
    denoised = patch_metrics(tiny, data, comps, "denoise", per_pass=4)
    final_at_answer = comps.index(Component("resid", tiny.n_layers - 1, P - 1, "resid_post"))
    torch.testing.assert_close(denoised[final_at_answer].double(), clean.double(), atol=1e-4, rtol=1e-4)
    # patching the embedding at every position at once is the clean run: check one position moves it
    assert (denoised[:P] - denoised[final_at_answer]).abs().max() > 0


def test_batches_over_the_data_equal_one_batch(tiny):
    data = TASKS["ioi"].build(tiny.tokenizer, 5, 2)
    comps = heads_and_mlps(tiny.n_layers, tiny.n_heads)
    whole = patch_metrics(tiny, data, comps, "denoise", per_pass=len(comps)).numpy()
    torch.testing.assert_close(
        torch.as_tensor(data_patch_metrics(tiny, data, comps, "denoise", batch_size=2, rows_per_pass=4)),
        torch.as_tensor(whole),
        atol=1e-6,
        rtol=1e-6,
    )
