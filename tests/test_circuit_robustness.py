"""23_robustness's choices: identities of the grid, node-level patching against 03's node patching, patching
restricted to positions, the tasks' second corruptions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.core.graph import graph_of
from lib.core.metrics import data_metric
from lib.core.patching import evaluate_mask
from lib.methods import robustness
from lib.methods.node_patching import Component, patch_metrics
from tasks import TASKS


@pytest.fixture(scope="module")
def ioi(tiny):
    return TASKS["ioi"].build(tiny.tokenizer, 8, 0)


def test_a_circuit_of_every_edge_is_faithful_under_every_choice(tiny, ioi):
    g = graph_of(tiny)
    task = TASKS["ioi"]
    datasets = {c: task.build(tiny.tokenizer, 8, 0, corruption=c) for c in task.corruptions}
    rows = robustness.evaluate(tiny, g, task, datasets, g.edge_exists, batch_size=8, n_bootstrap=0, seed=0)
    assert len(rows) == 2 * 3 * 2 * 2 * 3  # corruptions x ablations x levels x positions x metrics
    for row in rows:
        assert abs(row["full_minus_empty"]) > 1e-5, row  # the normalization means something
        assert row["faithfulness"] == pytest.approx(1.0, abs=1e-3), row
    # and the empty circuit is 0 by construction, while a partial circuit is neither
    half = (torch.rand(g.edge_exists.shape, generator=torch.Generator().manual_seed(0)) < 0.5) & g.edge_exists
    partial = robustness.evaluate(tiny, g, task, {"abc": datasets["abc"]}, half, 8, 0, 0)
    assert np.std([r["faithfulness"] for r in partial]) > 0.01


def test_node_level_equals_node_patching_of_the_nodes_left_out(tiny, ioi):
    """A circuit without node u, at node level, ablates every outgoing edge of u: that is 03's node patching of
    u (its corrupted output into the clean run)."""
    g = graph_of(tiny)
    for comp, name in [(Component("head", 1, 2), "a1.h2"), (Component("mlp", 0), "m0")]:
        keep = g.edge_exists.clone()
        keep[g.source_index[name]] = False
        keep[:, g.node_receivers(name)] = False
        nodes = robustness.node_level(g, keep)
        assert (nodes == (g.edge_exists & (torch.arange(g.n_sources) != g.source_index[name])[:, None])).all()
        edge_engine = data_metric(evaluate_mask(tiny, g, ioi, nodes, "resample", 4), ioi)
        patched = patch_metrics(tiny, ioi, [comp], "noise", 1)[0]
        torch.testing.assert_close(edge_engine.float(), patched.float(), atol=1e-4, rtol=1e-4)
        assert (
            edge_engine - data_metric(evaluate_mask(tiny, g, ioi, g.edge_exists, "resample", 4), ioi)
        ).abs().max() > 1e-3


def test_patching_only_named_positions(tiny, ioi):
    """All positions named = plain patching; no position named = the clean model; the IOI names are S2, S1+1
    and the end, one each per prompt."""
    g = graph_of(tiny)
    keep = torch.zeros_like(g.edge_exists)
    every = torch.ones(ioi.clean.shape, dtype=torch.bool)
    torch.testing.assert_close(
        evaluate_mask(tiny, g, ioi, keep, positions=every, batch_size=4),
        evaluate_mask(tiny, g, ioi, keep, batch_size=4),
    )
    torch.testing.assert_close(
        evaluate_mask(tiny, g, ioi, keep, positions=~every, batch_size=4),
        evaluate_mask(tiny, g, ioi, g.edge_exists, batch_size=4),
        atol=1e-5,
        rtol=1e-5,
    )
    named = robustness.named_positions(TASKS["ioi"], ioi)
    assert named is not None
    assert named.sum(1).tolist() == [3] * len(ioi) and named[torch.arange(len(ioi)), ioi.answer_pos].all()
    assert robustness.named_positions(TASKS["sva"], ioi) is None


@pytest.mark.parametrize("task", ["ioi", "sva", "docstring", "greater-than"])
def test_every_task_has_two_corruptions_with_the_same_clean_prompts(task, toy_tokenizer):
    t = TASKS[task]
    assert len(t.corruptions) == 2
    first, second = (t.build(toy_tokenizer, 20, 0, corruption=c) for c in t.corruptions)
    assert list(first.info.clean_text) == list(second.info.clean_text)
    assert list(first.info.corrupt_text) != list(second.info.corrupt_text)
    assert (first.clean != first.corrupt).any(1).all() and (second.clean != second.corrupt).any(1).all()
    with pytest.raises(ValueError, match="unknown"):
        t.build(toy_tokenizer, 2, 0, corruption="nonsense")


def test_verdict_names_the_extremes():
    rows = [
        {
            "corruption": "abc",
            "ablation": "resample",
            "level": "edges",
            "positions": "all",
            "metric": "task",
            "faithfulness": 0.9,
        },
        {
            "corruption": "abc",
            "ablation": "zero",
            "level": "edges",
            "positions": "all",
            "metric": "task",
            "faithfulness": 0.2,
        },
        {
            "corruption": "s2",
            "ablation": "mean",
            "level": "nodes",
            "positions": "all",
            "metric": "kl",
            "faithfulness": float("nan"),
        },
    ]
    v = robustness.verdict("ioi", rows)
    assert v["range"] == pytest.approx(0.7) and v["verdict"] == "not robust" and v["n_settings"] == 2
    assert "from 0.20 (zero/abc/edges/all positions/task) to 0.90 (resample/abc/edges/all positions/task)" in v["line"]


def test_script_writes_a_complete_run(tmp_path):
    import pandas as pd
    from conftest import run_cli

    r = run_cli(
        "23_robustness.py",
        "--tasks",
        "ioi",
        "sva",
        "--model",
        "toy",
        "--n-prompts",
        "8",
        "--n-bootstrap",
        "40",
        "--quiet",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    run = next((tmp_path / "23_robustness").iterdir())
    assert {
        "robustness.csv",
        "robustness_summary.csv",
        "robustness_heatmap.png",
        "dataset.csv",
        "run.json",
        "headline.csv",
    } <= {p.name for p in run.iterdir()}
    grid = pd.read_csv(run / "robustness.csv")
    assert len(grid[grid.task == "ioi"]) == 72 and len(grid[grid.task == "sva"]) == 36  # sva names no positions
    assert {"corruption", "ablation", "level", "positions", "metric", "faithfulness_ci_low"} <= set(grid.columns)
    summary = pd.read_csv(run / "robustness_summary.csv")
    assert summary.line.str.startswith(("ioi: faithfulness", "sva: faithfulness")).all()
    assert all(line in r.stdout for line in summary.line)
