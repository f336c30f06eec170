"""Scripts end to end through their CLI, including bad input (exit 2, one line, nothing written).

Most cases call the CLI entry point in-process (run_cli) to spare the interpreter start-up; a few run
the script as a separate process exactly as a user does (run_script)."""

import json

import pandas as pd
import pytest
from conftest import refused, run_cli, run_script

OFFLINE = {"HF_HUB_OFFLINE": "1"}


def run_dirs(out, script):
    base = out / script
    return sorted(p for p in base.iterdir()) if base.exists() else []


def test_dla_end_to_end(tmp_path):
    r = run_cli(  # in-process: test_default_gpt2_offline_is_one_sentence and the batch tests start real processes
        "01_dla.py", "--tasks", "ioi", "greater-than", "--model", "toy", "--n-prompts", "8", "--out", str(tmp_path)
    )
    assert r.returncode == 0, r.stderr
    (run,) = run_dirs(tmp_path, "01_dla")
    assert {p.name for p in run.iterdir()} == {
        "run.json",
        "dataset.csv",
        "dla.csv",
        "dla_check.csv",
        "dla_heads.png",
        "dla_top.png",
        "headline.csv",
        "dla_layers.csv",
        "dla_layers_ioi.png",
        "dla_layers_greater-than.png",
    }
    layers = pd.read_csv(run / "dla_layers.csv")
    assert len(layers) == 2 * (1 + 2 * 4)  # per task: the embedding, then attention and MLP of 4 layers
    check = pd.read_csv(run / "dla_check.csv")
    assert list(check.task) == ["ioi", "greater-than"]
    assert (check.max_abs_error < 1e-3).all()
    dla = pd.read_csv(run / "dla.csv")
    assert len(dla) == 2 * (1 + 4 * 4 + 4)
    assert ((dla.mean_ci_low <= dla["mean"] + 1e-9) & (dla["mean"] <= dla.mean_ci_high + 1e-9)).all()
    record = json.loads((run / "run.json").read_text())
    assert record["options"]["tasks"] == ["ioi", "greater-than"] and record["seed"] == 0
    assert record["model"]["name"] == "toy" and record["versions"]["torch"] and "commit" in record["git"]
    data = pd.read_csv(run / "dataset.csv")
    assert len(data) == 16 and {"clean_ids", "corrupt_ids", "correct_ids", "wrong_ids"} <= set(data.columns)


def test_logit_diff_reruns_are_byte_identical(tmp_path):
    args = ["--tasks", "all", "--model", "toy", "--n-prompts", "8", "--seed", "3", "--out", str(tmp_path)]
    for _ in range(2):
        r = run_cli("02_logit_diff.py", *args)
        assert r.returncode == 0, r.stderr
    first, second = run_dirs(tmp_path, "02_logit_diff")  # two runs, two directories: nothing overwritten
    for name in ("dataset.csv", "items.csv", "summary.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "metric_hist.png").exists()
    summary = pd.read_csv(first / "summary.csv")
    assert set(summary.condition) == {"clean", "corrupted", "circuit"}
    assert set(summary[summary.group == "all"].task) == {"ioi", "sva", "docstring", "greater-than"}
    # toy has no published circuit: auto discovers an EAP-IG top-k circuit, named in every row and run.json
    assert summary.circuit.str.startswith("auto:eap-ig-top").all()
    record = json.loads((first / "run.json").read_text())
    for info in record["circuits"].values():
        assert info["source"] == "auto" and info["k"] == info["n_edges"] and info["label"].endswith(f"top{info['k']}")
        assert info["reached_target"] == (info["discovery_faithfulness"] >= 0.8)
    circuit = summary[(summary.condition == "circuit") & (summary.group == "all")]
    assert circuit.faithfulness.notna().all()
    assert (circuit.faithfulness_ci_low <= circuit.faithfulness).all() and (
        circuit.faithfulness <= circuit.faithfulness_ci_high
    ).all()
    assert {"mean_ci_low", "median_ci_high", "accuracy_ci_low", "faithfulness_median_ci_high"} <= set(summary.columns)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "ioi", "nope"], "unknown task 'nope'; valid tasks: ioi, sva, docstring, greater-than or all"),
        (["--tasks", "ioi", "--n-prompts", "0"], "--n-prompts must be at least 1"),
        (["--tasks", "ioi", "--model", "no-such-model-xyz"], "--model toy"),
        (["--tasks", "ioi", "--device", "tpu"], "unknown device"),
        (["--tasks", "ioi", "--bogus"], "No such option"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, args, message):
    r = run_cli("02_logit_diff.py", *args, "--out", str(tmp_path))
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert run_dirs(tmp_path, "02_logit_diff") == []  # nothing half-written


def test_circuit_file_option(tmp_path):
    """A circuit JSON with every edge gives faithfulness 1 (all kept = clean); bad files fail cleanly."""
    from lib.core.graph import Graph
    from lib.io.circuit_json import Circuit

    g = Graph(4, 4)
    Circuit("toy", "ioi", "all", {}, {e: 0.0 for e in g.edge_names}).save(tmp_path / "all.json", g)
    r = run_cli(
        "02_logit_diff.py",
        "--tasks",
        "ioi",
        "--model",
        "toy",
        "--n-prompts",
        "6",
        "--circuit",
        str(tmp_path / "all.json"),
        "--out",
        str(tmp_path / "res"),
    )
    assert r.returncode == 0, r.stderr
    (run,) = run_dirs(tmp_path / "res", "02_logit_diff")
    s = pd.read_csv(run / "summary.csv")
    row = s[(s.condition == "circuit") & (s.group == "all")].iloc[0]
    assert row.circuit == "file:all.json" and abs(row.faithfulness - 1) < 1e-6
    (tmp_path / "bad.json").write_text('{"edges": [{"edge": "a3.h0->a1.h0<q>"}]}')
    (tmp_path / "broken.json").write_text("{")
    for circuit, message in [
        (tmp_path / "missing.json", "neither canonical, auto, nor an existing"),
        (tmp_path / "bad.json", "does not exist"),
        (tmp_path / "broken.json", "not valid JSON"),
        ("canonical", "no canonical circuit is published for task ioi on model toy"),
    ]:
        r = run_cli(
            "02_logit_diff.py",
            "--tasks",
            "ioi",
            "--model",
            "toy",
            "--circuit",
            str(circuit),
            "--out",
            str(tmp_path / "res2"),
        )
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert run_dirs(tmp_path / "res2", "02_logit_diff") == []


def test_activation_patching_end_to_end(tmp_path):
    r = run_cli(
        "03_activation_patching.py", "--tasks", "sva", "--model", "toy", "--n-prompts", "6", "--out", str(tmp_path)
    )
    assert r.returncode == 0, r.stderr
    (run,) = run_dirs(tmp_path, "03_activation_patching")
    assert {
        "patching.csv",
        "patching_heads.png",
        "patching_resid_sva_denoise.png",
        "patching_resid_sva_noise.png",
        "dataset.csv",
        "run.json",
    } <= {p.name for p in run.iterdir()}
    df = pd.read_csv(run / "patching.csv")
    heads = df[df.kind == "head"]
    assert len(heads) == 2 * 16 and set(df.direction) == {"denoise", "noise"}
    assert (
        (heads.normalized_ci_low <= heads.normalized + 1e-9) & (heads.normalized <= heads.normalized_ci_high + 1e-9)
    ).all()
    final = df[(df.kind == "resid_post") & (df.position == df[df.kind == "resid_post"].position.max())]
    assert (abs(final.normalized - final.direction.map({"denoise": 1.0, "noise": 0.0})) < 1e-4).all()


def test_default_gpt2_offline_is_one_sentence(tmp_path):
    """As a user runs it, as its own process: no weights offline -> exit 2, one line naming --model toy."""
    r = run_script("02_logit_diff.py", "--tasks", "ioi", "sva", "--out", str(tmp_path), env=OFFLINE)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.strip()]
    assert line.startswith("error: cannot load model 'gpt2'") and "--model toy" in line and "gpt2-random" in line
    assert run_dirs(tmp_path, "02_logit_diff") == []


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = run_cli("01_dla.py", "--tasks", "ioi", "--model", "toy", "--out", str(blocker / "results"))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: cannot write results under") and len(r.stderr.strip().splitlines()) == 1


def test_zero_batch_size(tmp_path):
    r = run_cli("02_logit_diff.py", "--tasks", "ioi", "--model", "toy", "--batch-size", "0", "--out", str(tmp_path))
    assert r.returncode == 2 and "--batch-size must be at least 1" in r.stderr


def test_eap_end_to_end(tmp_path):
    r = run_cli(
        "05_eap.py",
        "--tasks",
        "ioi",
        "--model",
        "toy",
        "--n-prompts",
        "6",
        "--method",
        "eap",
        "--top-k",
        "10",
        "50",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    (run,) = run_dirs(tmp_path, "05_eap")
    names = {p.name for p in run.iterdir()}
    assert {
        "edge_scores.csv",
        "faithfulness_curve.csv",
        "faithfulness_curve.png",
        "diagram_ioi.png",
        "circuit_ioi_top10.json",
        "circuit_ioi_top50.json",
        "dataset.csv",
        "run.json",
    } <= names
    scores = pd.read_csv(run / "edge_scores.csv")
    assert len(scores) == 479 and sorted(scores.abs_rank) == list(range(1, 480))
    curve = pd.read_csv(run / "faithfulness_curve.csv")
    assert curve.edges_kept.iloc[-1] == 479 and abs(curve.faithfulness.iloc[-1] - 1.0) < 1e-4  # all kept = clean
    assert {"faithfulness_ci_low", "faithfulness_ci_high", "metric_ci_low"} <= set(curve.columns)
    assert len(json.loads((run / "circuit_ioi_top10.json").read_text())["edges"]) == 10


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metric", "kl"], "gradient of KL"),
        (["--method", "acdc"], "unknown method 'acdc'"),
        (["--ig-steps", "0"], "--ig-steps must be between 1 and 1,000 (got 0)"),
    ],
)
def test_eap_bad_input(tmp_path, args, message):
    refused(run_cli("05_eap.py", "--tasks", "ioi", "--model", "toy", *args, "--out", str(tmp_path)), message)


def test_acdc_end_to_end_and_resume_errors(tmp_path):
    r = run_cli(
        "06_acdc.py",
        "--tasks",
        "sva",
        "--model",
        "toy",
        "--n-prompts",
        "4",
        "--thresholds",
        "0.01",
        "1.0",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    (run,) = run_dirs(tmp_path, "06_acdc")
    names = {p.name for p in run.iterdir()}
    assert {"acdc_sweep.csv", "faithfulness_vs_edges.png", "dataset.csv", "run.json"} <= names
    assert "checkpoint.json" not in names  # a finished run keeps no resume state
    sweep = pd.read_csv(run / "acdc_sweep.csv")
    assert list(sweep.tau) == [0.01, 1.0] and (sweep.edges_tried == 479).all()
    assert (sweep.faithfulness_ci_low <= sweep.faithfulness).all() and (
        sweep.faithfulness <= sweep.faithfulness_ci_high
    ).all()
    r = run_cli("06_acdc.py", "--resume", str(run))
    assert r.returncode == 2 and "not an interrupted run" in r.stderr


def test_causal_scrubbing_end_to_end(tmp_path):
    args = [
        "--tasks",
        "sva",
        "docstring",
        "--model",
        "toy",
        "--n-prompts",
        "12",
        "--pool-size",
        "150",
        "--n-seeds",
        "2",
        "--out",
        str(tmp_path),
    ]
    for _ in range(2):
        r = run_cli("04_causal_scrubbing.py", *args)
        assert r.returncode == 0, r.stderr
    first, second = run_dirs(tmp_path, "04_causal_scrubbing")
    assert {p.name for p in first.iterdir()} == {
        "run.json",
        "dataset.csv",
        "items.csv",
        "seeds.csv",
        "summary.csv",
        "hypothesis.csv",
        "headline.csv",
        "scrubbing_sva.png",
        "scrubbing_docstring.png",
    }
    for name in ("items.csv", "seeds.csv", "summary.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    summary = pd.read_csv(first / "summary.csv")
    assert len(summary) == 6 and (summary.n_seeds == 2).all() and (summary.n_prompts == 12).all()
    feature = summary[summary.test == "feature hypothesis"]
    assert (feature.loss_recovered_ratio_of_means_ci_low <= feature.loss_recovered_ratio_of_means).all()
    assert (feature.kl_mean_ci_low <= feature.kl_mean).all() and (feature.kl_mean <= feature.kl_mean_ci_high).all()
    assert list(summary.test[:3]) == [
        "feature hypothesis",
        "complement-only (weaker test)",
        "baseline (all inputs resampled)",
    ]
    assert summary.hypothesis[0] == "answer feature (number)" and summary.resampled_fraction[0] > 0.5
    items = pd.read_csv(first / "items.csv")
    assert len(items) == 2 * 3 * 2 * 12 and (items.kl >= 0).all() and (items.reverse_kl >= 0).all()
    base = items[items.test == "baseline (all inputs resampled)"]
    assert (base.metric_scrubbed == base.metric_baseline).all() and (base.loss_recovered.fillna(0) == 0).all()
    assert (items.groupby(["task", "item"]).metric_full.nunique() == 1).all()
    assert summary.interpretation.str.contains("weaker test").sum() == 2
    record = json.loads((first / "run.json").read_text())
    assert record["options"]["n_seeds"] == 2 and record["scrubbing"]["sva"]["pool_size"] == 150
    hyp = pd.read_csv(first / "hypothesis.csv")
    assert set(hyp[hyp.node != "input"].features) <= {"number", "answer_param", "prompt"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n-seeds", "0"], "--n-seeds must be between 1 and 1,000 (got 0)"),
        (["--pool-size", "5"], "--pool-size (5) must be at least --n-prompts (8)"),
        (["--hypothesis", "psychic"], "unknown hypothesis 'psychic'"),
        (["--hypothesis", "canonical"], "names head 9.9, which a 4-layer, 4-head model does not have"),
        (["--circuit", "missing.json"], "is neither canonical, auto, nor an existing circuit JSON file"),
    ],
)
def test_causal_scrubbing_bad_input(tmp_path, args, message):
    r = run_cli(
        "04_causal_scrubbing.py", "--tasks", "ioi", "--model", "toy", "--n-prompts", "8", "--out", str(tmp_path), *args
    )
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert run_dirs(tmp_path, "04_causal_scrubbing") == []


def test_interrupt_is_one_line_exit_130(capsys):
    from lib.io import cli

    app = cli.script_app("interrupted")

    @app.command()
    def main(x: int = 1):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        cli.main(app, [])
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == "error: interrupted by Ctrl-C"
