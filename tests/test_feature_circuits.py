"""09_feature_circuits.py: node effects accumulated batch by batch equal one batch; the circuit of every node is
the model (faithfulness 1, completeness 0) for features, neurons and random circuits alike; a complete run on
toy; bad options and dictionaries are one line."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import completed_run, refused, run_cli


@pytest.mark.parametrize("aggregation", ["sum", "none"])
def test_batches_accumulate_to_the_one_batch_means(toy, aggregation):
    from lib.core.model import TOY_DIR
    from lib.features import files
    from lib.features.circuit import Accumulator
    from lib.features.effects import node_effects
    from tasks import TASKS

    chosen = {k: v for k, v in files.read_set(TOY_DIR / "dictionaries").items() if k in ("resid1", "tc2")}
    data = TASKS["ioi"].build(toy.tokenizer, 6, 0)
    whole, parts = Accumulator(aggregation), Accumulator(aggregation)
    whole.add(node_effects(toy, chosen, data, "attrib"), data.lengths)
    for idx in ([0, 1], [2, 3, 4], [5]):
        batch = data.subset(idx)
        parts.add(node_effects(toy, chosen, batch, "attrib"), batch.lengths)
    a, b = whole.result(), parts.result()
    for site in a.features:
        torch.testing.assert_close(a.features[site], b.features[site], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.errors[site], b.errors[site], atol=1e-5, rtol=1e-4)
    if aggregation == "none":  # row 0 is the answer position of every prompt
        per_prompt = node_effects(toy, chosen, data, "attrib")["resid1"]["error"]
        at_end = per_prompt[torch.arange(len(data)), data.lengths - 1].mean()
        torch.testing.assert_close(a.errors["resid1"][0], at_end, atol=1e-5, rtol=1e-4)


def test_complete_run_on_toy(tmp_path):
    run = completed_run(
        tmp_path,
        "09_feature_circuits.py",
        "--tasks",
        "ioi",
        "sva",
        "--model",
        "toy",
        "--n-prompts",
        "8",
        "--method",
        "attrib",
        "--n-random",
        "1",
        "--n-bootstrap",
        "40",
        "--quiet",
    )
    names = {p.name for p in run.iterdir()}
    assert {
        "node_effects.csv",
        "features.csv",
        "faithfulness_curve.csv",
        "faithfulness_curve_ioi.png",
        "area.csv",
        "circuit_ioi.png",
        "circuit_ioi.dot",
        "faithfulness_curve_sva.png",
        "circuit_ioi.json",
        "circuit_sva.json",
        "headline.csv",
        "run.json",
    } <= names
    curve = pd.read_csv(run / "faithfulness_curve.csv")
    assert set(curve.variant) == {"features", "features without errors", "neurons", "random"}
    for (task, variant), d in curve.groupby(["task", "variant"]):
        full = d[d.nodes_requested == d.nodes_requested.max()]
        if variant != "features without errors":  # every node kept is the model
            assert np.allclose(full.faithfulness, 1.0, atol=1e-4), (task, variant)
    features = curve[(curve.variant == "features") & (curve.nodes_requested == curve.nodes_requested.max())]
    assert np.allclose(features.completeness, 0.0, atol=1e-4)  # its complement keeps nothing
    nodes = pd.read_csv(run / "node_effects.csv")
    assert nodes.node.str.match(r"^(embed|attn\d|mlp\d|resid\d|tc\d)/(f\d+|err)$").all()
    areas = pd.read_csv(run / "area.csv")
    assert len(areas) == 2 * 4 and ((areas.cpr_like >= -0.5) & (areas.cpr_like <= 1.5)).all()
    from lib.methods.area import area  # by hand for one curve: trapezoids over the fraction of nodes kept

    part = curve[(curve.task == "ioi") & (curve.variant == "features")].groupby("nodes_kept").faithfulness.mean()
    total = pd.read_csv(run / "node_effects_summary.csv").set_index("task").at["ioi", "nodes"]
    x, f = part.index.to_numpy() / total, part.to_numpy()
    by_hand = sum((x[i + 1] - x[i]) * (f[i] + f[i + 1]) / 2 for i in range(len(x) - 1))
    row = areas[(areas.task == "ioi") & (areas.variant == "features")].iloc[0]
    assert np.isclose(row.cpr_like, by_hand) and np.isclose(row.cpr_like, area(f, x, "area"))
    circuit = json.loads((run / "circuit_ioi.json").read_text())
    dot = (run / "circuit_ioi.dot").read_text()
    assert all(f'"{n["node"]}"' in dot for n in circuit["nodes"])  # every circuit node drawn
    assert all((f'"{n["node"]}" [shape=box' in dot) == n["node"].endswith("/err") for n in circuit["nodes"])
    assert all(abs(n["score"]) >= 0.1 for n in circuit["nodes"]) and circuit["model"] == "toy"
    record = json.loads((run / "run.json").read_text())
    assert set(record["dictionaries"]) >= {"embed", "resid3"} and "tc0" in record["dictionaries_not_used"]
    edges = pd.read_csv(run / "edges.csv")
    assert (edges.effect.abs() >= 0.01).all() and len(edges) > 0
    circuit_nodes = {n["node"] for n in circuit["nodes"]}
    assert (
        set(edges[edges.task == "ioi"].upstream) <= circuit_nodes
        and set(edges[edges.task == "ioi"].downstream) <= circuit_nodes
    )
    assert {e["edge"] for e in circuit["edges"]} == {
        f"{u}->{d}" for u, d in zip(edges[edges.task == "ioi"].upstream, edges[edges.task == "ioi"].downstream)
    }
    assert all(f'"{e["edge"].split("->")[0]}" -> "{e["edge"].split("->")[1]}"' in dot for e in circuit["edges"])


def test_positions_from_the_answer(tmp_path):
    r = run_cli(
        "09_feature_circuits.py",
        "--tasks",
        "sva",
        "--model",
        "toy",
        "--n-prompts",
        "6",
        "--aggregate",
        "none",
        "--method",
        "attrib",
        "--ablation",
        "resample",
        "--n-random",
        "0",
        "--n-bootstrap",
        "0",
        "--quiet",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    (run,) = (tmp_path / "09_feature_circuits").iterdir()
    nodes = pd.read_csv(run / "node_effects.csv")
    assert nodes.node.str.match(r"^\w+/(f\d+|err)@end(-\d+)?$").all() and (nodes.position == "end").any()
    curve = pd.read_csv(run / "faithfulness_curve.csv")
    full = curve[(curve.variant == "features") & (curve.nodes_requested == curve.nodes_requested.max())]
    assert np.allclose(full.faithfulness, 1.0, atol=1e-4) and np.allclose(full.completeness, 0.0, atol=1e-4)
    assert json.loads((run / "run.json").read_text())["edges"].startswith("not computed under --aggregate none")
    # its page: one column per position, the answer's last; no feature above the threshold leaves features.csv
    # with its header only (it was an empty file, which no CSV reader reads)
    assert list(pd.read_csv(run / "features.csv").columns)[:3] == ["task", "node", "site"]
    page = (run / "view.html").read_text()
    (view,) = json.loads(page.split('id="view-data">')[1].split("</script>")[0])["views"]
    assert view["positions"][-1] == "end" and view["nodes"]["id"] == list(nodes.node)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "exact"], "unknown --method 'exact'"),
        (["--node-threshold", "-1"], "--node-threshold must be non-negative"),
        (["--ig-steps", "0"], "--ig-steps must be between 1 and 1,000"),
    ],
)
def test_bad_options(tmp_path, args, message):
    refused(
        run_cli(
            "09_feature_circuits.py", "--tasks", "ioi", "--model", "./no-such-model", *args, "--out", str(tmp_path)
        ),
        message,
    )


def test_dictionaries_of_another_model_are_refused_before_any_work(tmp_path):
    from lib.features import files
    from lib.features.dictionary import Dictionary

    wide = Dictionary(
        {"architecture": "standard", "hook_name": "blocks.0.hook_resid_post", "model_name": "toy"},
        torch.zeros(768, 8),
        torch.zeros(8, 768),
        torch.zeros(8),
        torch.zeros(768),
    )
    files.write(tmp_path / "set" / "r0", wide)
    r = run_cli(
        "09_feature_circuits.py",
        "--tasks",
        "ioi",
        "--model",
        "toy",
        "--dictionaries",
        str(tmp_path / "set"),
        "--out",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2 and "dictionary r0: d_in is 768, but blocks.0.hook_resid_post is 64 wide" in r.stderr
    assert not any((tmp_path / "o").rglob("*.csv"))
