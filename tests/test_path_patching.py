"""07's path patching against 03's node patching, unreachable receivers, one sender per pass, and Wang et al.'s
three-run procedure."""

from __future__ import annotations

import pytest
import torch

from lib.core.errors import UserError
from lib.core.forward import answer_logits, logits_at
from lib.core.graph import graph_of
from lib.core.metrics import data_metric
from lib.core.patching import as_sources, source_hooks, source_outputs
from lib.methods.node_patching import Component, patch_metrics
from lib.methods.path_patching import PathPatcher
from lib.methods.receivers import parse_receivers, parse_senders
from tasks import TASKS

SENDERS = ["a0.h1", "m0", "a1.h3", "m1"]


@pytest.fixture(scope="module")
def setup(tiny):
    return tiny, graph_of(tiny), TASKS["ioi"].build(tiny.tokenizer, 6, 0)


def component(name: str) -> Component:
    return (
        Component("head", int(name[1]), int(name.split(".h")[1])) if name[0] == "a" else Component("mlp", int(name[1:]))
    )


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_direct_to_all_receivers_is_node_patching(setup, direction):
    model, g, data = setup
    rows = [g.source_index[s] for s in SENDERS]
    every = torch.ones(g.n_receivers, dtype=torch.bool)
    ours = PathPatcher(model, g, data, direction).metrics(rows, every, "direct")
    for i, name in enumerate(SENDERS):
        torch.testing.assert_close(
            ours[i], patch_metrics(model, data, [component(name)], direction, 1)[0], atol=1e-4, rtol=1e-4
        )


def test_unreachable_receivers_change_nothing(setup):
    model, g, data = setup
    base = data_metric(answer_logits(model, data.clean, data.answer_pos, 6), data)
    layer0 = torch.zeros(g.n_receivers, dtype=torch.bool)
    layer0[g.qkv_receivers(0, "q")] = True
    patcher = PathPatcher(model, g, data, "noise")
    for path in ("direct", "through-mlps"):
        assert torch.equal(patcher.metrics([g.source_index["a1.h3"]], layer0, path)[0], base)


def test_many_senders_per_pass_equal_one_per_pass(setup):
    model, g, data = setup
    rows = [g.source_index[s] for s in SENDERS]
    receivers = torch.zeros(g.n_receivers, dtype=torch.bool)
    receivers[g.qkv_receivers(1, "q")] = True
    receivers[g.logits_receiver] = True
    patcher = PathPatcher(model, g, data, "noise")
    together = patcher.metrics(rows, receivers, "through-mlps")
    alone = torch.stack([PathPatcher(model, g, data, "noise").metrics([r], receivers, "through-mlps")[0] for r in rows])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert (together - data_metric(answer_logits(model, data.clean, data.answer_pos, 6), data)).abs().max() > 1e-2


def wang_three_runs(model, g, data, sender: str, receiver_hook: str, freeze_mlps: bool):
    """Wang et al.'s procedure, one sender, receivers = every head's input at one hook: (1) clean and corrupted
    runs; (2) clean run with the sender's output corrupted and every other head (and, for the direct path, every
    MLP) frozen to its clean output, the receivers' inputs recorded; (3) clean run with those inputs."""
    clean_out = source_outputs(model, g, data.clean)
    corrupt_out = source_outputs(model, g, data.corrupt)
    s = g.source_index[sender]
    recorded = {}

    def freeze(rows):
        def hook(x, hook):
            if x.dim() == 3 and not freeze_mlps and not (rows.start <= s < rows.stop):
                return x
            value = as_sources(x).clone()
            value[:] = clean_out[rows]
            if rows.start <= s < rows.stop:
                value[s - rows.start] = corrupt_out[s]
            return value.permute(1, 2, 0, 3) if x.dim() == 4 else value[0]

        return hook

    def record(x, hook):
        recorded["x"] = x.clone()
        return x

    with torch.no_grad():
        model.bridge.run_with_hooks(
            data.clean, fwd_hooks=[(n, freeze(r)) for n, r in source_hooks(g)[1:]] + [(receiver_hook, record)]
        )
    logits = logits_at(model, data.clean, data.answer_pos, [(receiver_hook, lambda x, hook: recorded["x"])])
    return data_metric(logits, data)


@pytest.mark.parametrize("path", ["direct", "through-mlps"])
def test_equals_wang_et_al_three_runs(setup, path):
    model, g, data = setup
    receivers = torch.zeros(g.n_receivers, dtype=torch.bool)
    receivers[g.qkv_receivers(1, "q")] = True
    patcher = PathPatcher(model, g, data, "noise")
    for sender in ("a0.h1", "m0", "a0.h3"):
        ours = patcher.metrics([g.source_index[sender]], receivers, path)[0]
        theirs = wang_three_runs(model, g, data, sender, "blocks.1.hook_q_input", freeze_mlps=path == "direct")
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    direct = patcher.metrics([g.source_index["a0.h1"]], receivers, "direct")
    through = patcher.metrics([g.source_index["a0.h1"]], receivers, "through-mlps")
    assert (direct - through).abs().max() > 1e-4  # m0 carries part of a0.h1's change: the paths differ


def test_receiver_and_sender_names(setup):
    _, g, _ = setup
    sets = parse_receivers("a1.h2<q> m1 logits a1.h0 all-heads<k>", g, "ioi", "tiny")
    assert [label for label, _, _ in sets[:4]] == ["a1.h2<q>", "m1", "logits", "a1.h0"]
    assert int(sets[3][2].sum()) == 3 and len(sets) == 4 + g.n_layers * g.n_heads
    with pytest.raises(UserError, match="canonical group of the task \\(none for ioi on this model\\)"):
        parse_receivers("name-movers<q>", g, "ioi", "tiny")
    assert parse_senders("", g) == list(range(1, g.n_sources))
    with pytest.raises(UserError, match="is not a head"):
        parse_senders("input", g)


def test_canonical_groups_on_gpt2_shape():
    from lib.core.graph import Graph

    g = Graph(12, 12)
    ((label, scan, mask),) = parse_receivers("name-movers<q>", g, "ioi", "gpt2")
    assert sorted(g.receivers[i] for i in mask.nonzero().flatten()) == ["a10.h0<q>", "a9.h6<q>", "a9.h9<q>"]
    ((_, _, mask),) = parse_receivers("s-inhibition<v>", g, "ioi", "gpt2")
    assert int(mask.sum()) == 4


def test_script_writes_a_complete_run(tmp_path):
    import pandas as pd
    from conftest import run_cli

    r = run_cli(
        "07_path_patching.py",
        "--tasks",
        "ioi",
        "greater-than",
        "--model",
        "toy",
        "--n-prompts",
        "6",
        "--receivers",
        "logits all-heads<v>",
        "--path",
        "direct",
        "--n-bootstrap",
        "40",
        "--quiet",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    run = next((tmp_path / "07_path_patching").iterdir())
    frame = pd.read_csv(run / "path_patching.csv")
    n_senders = 4 * 5  # toy: 4 layers of 4 heads and an MLP
    assert len(frame) == 2 * (1 + 16) * 2 * n_senders  # tasks x receiver sets x directions x senders
    assert {"task", "sender", "receivers", "path", "direction", "effect", "n"} <= set(frame.columns)
    names = {p.name for p in run.iterdir()}
    assert "path_patching_0_logits.png" in names and any(n.startswith("path_scan_all-heads_v_ioi") for n in names)
