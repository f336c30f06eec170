"""A CLI that answers at once (no heavy import before the options are valid), and bad or edge inputs that were
mishandled before: each refused in one line before any work, or accepted and recorded visibly."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, refused, run_cli

HEAVY = ("torch", "transformer_lens", "transformers", "pandas", "scipy", "matplotlib")
SCRIPTS = sorted(p.name for p in ROOT.glob("[0-9][0-9]_*.py"))
TOY = ["--model", "toy"]

# Run in one fresh interpreter: each case runs a script's CLI in-process and reports the heavy modules
# loaded so far, so the first case that imports one is the one named.
PROBE = r"""
import io, json, runpy, sys, contextlib
heavy = set(json.loads(sys.argv[1]))
report = []
for script, args in json.loads(sys.argv[2]):
    sys.argv = [script, *args]
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = e.code
    loaded = sorted({m.split(".")[0] for m in sys.modules} & heavy)
    report.append({"script": script, "args": args, "code": code, "stderr": err.getvalue(), "heavy": loaded})
print(json.dumps(report))
"""


def cases():
    for script in SCRIPTS:
        yield script, ["--help"]
        yield script, ["--n-prompts", "0"]  # an out-of-range number
        yield script, ["--tasks", "no-such-task"]
        yield script, ["--no-such-option"]
        yield script, ["--model", "my model"]
        yield script, ["--n-bootstrap", "1"]
    for script in ("02_logit_diff.py", "21_output_variants.py", "22_hypothesis_tests.py", "23_robustness.py"):
        yield script, ["--circuit", "/no/such/circuit.json"]  # an unreadable file
    yield "24_compare_circuits.py", ["--circuits", "/no/a.json", "/no/b.json"]
    yield "05_eap.py", ["--tasks", "ioi", "/no/such/task.csv"]  # a task file that is not there
    yield "05_eap.py", ["--tasks", str(ROOT / "tasks" / "examples" / "ioi_pairs.csv"), "--task-metric", "nope"]
    yield "batch.py", ["--help"]
    yield "batch.py", ["run", "/no/such/grid.toml", "--out", "/tmp/unused-batch-out"]


def test_help_and_option_errors_import_nothing_heavy():
    all_cases = list(cases())
    r = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HEAVY), json.dumps(all_cases)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    for case in report:
        assert not case["heavy"], f"{case['script']} {case['args']} imported {case['heavy']}"
        if case["args"] == ["--help"]:
            assert case["code"] in (0, None), case
        else:
            lines = [line for line in case["stderr"].splitlines() if line.strip()]
            assert case["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), case


@pytest.mark.parametrize(
    "name, message",
    [
        ("toy ", "(did you mean 'toy'?)"),
        ("my model", "nor a hub name of the form owner/name"),
        ("org/name/extra", "nor a hub name of the form owner/name"),
    ],
)
def test_model_names_that_are_no_names(tmp_path, name, message):
    refused(run_cli("02_logit_diff.py", "--model", name, "--out", str(tmp_path)), message)
    assert not tmp_path.joinpath("02_logit_diff").exists()


@pytest.mark.parametrize(
    "value, message",
    [
        ("1", "--n-bootstrap must be 0 (no intervals) or between 40 and 100,000 (got 1)"),
        ("39", "between 40 and"),
        ("1000000000", "(got 1,000,000,000)"),
        ("-3", "(got -3)"),
    ],
)
def test_bootstrap_counts_refused_before_any_work(tmp_path, value, message):
    refused(run_cli("21_output_variants.py", *TOY, "--n-bootstrap", value, "--out", str(tmp_path)), message)
    assert not tmp_path.joinpath("21_output_variants").exists()


def test_prompt_counts_bounded(tmp_path):
    refused(
        run_cli("01_dla.py", *TOY, "--n-prompts", "10000000", "--out", str(tmp_path)),
        "--n-prompts must be at most 100,000 (got 10,000,000)",
    )


def test_resume_with_equals_is_resume(tmp_path):
    same = run_cli("06_acdc.py", "--resume", str(tmp_path / "nowhere"))
    equals = run_cli("06_acdc.py", f"--resume={tmp_path / 'nowhere'}")
    assert equals.returncode == same.returncode == 2 and equals.stderr == same.stderr
    refused(run_cli("06_acdc.py", f"--resume={tmp_path}", "--tasks", "ioi"), "give no other option (got --tasks ioi)")


def test_typed_values_are_echoed_as_typed(tmp_path):
    refused(
        run_cli("06_acdc.py", *TOY, "--thresholds", "0.01", "abc", "--out", str(tmp_path)),
        "--thresholds must be numbers, got '0.01 abc'",
    )


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("05_eap.py", ["--top-k", "100000"], "--top-k 100,000 is more than the model's 479 edges"),
        ("05_eap.py", ["--threshold", "-1"], "--threshold must be non-negative"),
        (
            "08_attribution_vs_patching.py",
            ["--sample", "1000000"],
            "--sample 1,000,000 is more than the model's 479 edges",
        ),
        ("06_acdc.py", ["--prune-with", "eap", "--prune-top", "5000"], "--prune-top 5,000 is more than the model's"),
    ],
)
def test_edge_counts_beyond_the_graph_refused_before_any_work(tmp_path, script, args, message):
    refused(run_cli(script, "--tasks", "ioi", *TOY, "--n-prompts", "4", *args, "--out", str(tmp_path)), message)
    assert not any(tmp_path.rglob("*.csv"))


def write(path, text, bom=False):
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def test_circuit_files_read_strictly(tmp_path):
    edge = "input->a0.h1<q>"
    cfg = {"n_layers": 4, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 64}
    cases = {
        "string in_graph": (
            json.dumps({"cfg": cfg, "nodes": {}, "edges": {edge: {"score": 1.0, "in_graph": "false"}}}),
            "in_graph is 'false'; it must be true or false (a JSON boolean)",
        ),
        "duplicate list": (json.dumps({"edges": [{"edge": edge}, {"edge": edge}]}), f"edge {edge} is listed twice"),
        "duplicate key": (
            '{"cfg": '
            + json.dumps(cfg)
            + ', "nodes": {}, "edges": {"'
            + edge
            + '": {"score": 1, "in_graph": true}, "'
            + edge
            + '": {"score": 2, "in_graph": true}}}',
            f"key '{edge}' appears twice in one object",
        ),
        "other model": (
            json.dumps({"model": "gpt2", "edges": [{"edge": edge}]}),
            "was made for model 'gpt2', not 'toy'",
        ),
    }
    for i, (text, message) in enumerate(cases.values()):
        path = write(tmp_path / f"c{i}.json", text)
        r = run_cli(
            "02_logit_diff.py",
            "--tasks",
            "ioi",
            *TOY,
            "--n-prompts",
            "4",
            "--circuit",
            str(path),
            "--out",
            str(tmp_path / "out"),
        )
        refused(r, message)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.csv"))


def test_a_byte_order_mark_is_allowed(tmp_path):
    path = write(tmp_path / "bom.json", json.dumps({"model": "toy", "edges": [{"edge": "a0.h1->logits"}]}), bom=True)
    r = run_cli(
        "02_logit_diff.py",
        "--tasks",
        "ioi",
        *TOY,
        "--n-prompts",
        "4",
        "--n-bootstrap",
        "0",
        "--circuit",
        str(path),
        "--out",
        str(tmp_path / "out"),
    )
    assert r.returncode == 0, r.stderr


def test_broken_config_is_named_as_the_config(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for f in (ROOT / "models" / "toy").iterdir():
        if f.is_file():
            (model / f.name).write_bytes(f.read_bytes())
    (model / "config.json").write_text('{"model_type": "gpt2", ')
    refused(
        run_cli("02_logit_diff.py", "--tasks", "ioi", "--model", str(model), "--out", str(tmp_path / "out")),
        "cannot read the config (config.json) of the model in local directory",
    )


def test_path_patching_examples_exist_in_the_model(tmp_path):
    r = run_cli(
        "07_path_patching.py",
        "--tasks",
        "ioi",
        *TOY,
        "--n-prompts",
        "4",
        "--receivers",
        "a9.h9<q>",
        "--out",
        str(tmp_path),
    )
    refused(r, "--receivers 'a9.h9<q>' is not a receiver (a3.h0<q>, m3, logits), a node (a3.h0)")


def test_grid_false_flags_are_passed_and_variadic_circuits_accepted(tmp_path):
    from lib.batch import grid
    from lib.io import cli

    (cell,) = grid.expand(
        {
            "experiment": [
                {
                    "script": "06_acdc.py",
                    "tasks": "ioi",
                    "plain": False,
                    "prune-with": "eap",
                    "prune-top": 20,
                    "quiet": False,
                }
            ]
        }
    )
    assert "--no-plain" in cell.argv() and "--no-quiet" in cell.argv()
    assert cli.check_argv(cli.load_script("06_acdc.py").app, cell.argv()) is None
    a = write(tmp_path / "a.json", json.dumps({"edges": ["a0.h1->logits"]}))
    b = write(tmp_path / "b.json", json.dumps({"edges": ["a0.h2->logits"]}))
    assert cli.check_argv(cli.load_script("24_compare_circuits.py").app, ["--circuits", str(a), str(b)]) is None


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("05_eap.py", ["--ig-steps", "100000000"], "--ig-steps must be between 1 and 1,000 (got 100,000,000)"),
        ("05_eap.py", ["--n-random", "5000"], "--n-random must be between 0 and 1,000"),
        ("04_causal_scrubbing.py", ["--n-seeds", "100000"], "--n-seeds must be between 1 and 1,000"),
        (
            "22_hypothesis_tests.py",
            ["--n-permutations", "1000000000"],
            "--n-permutations must be between 1 and 100,000",
        ),
        ("22_hypothesis_tests.py", ["--n-random", "100000000"], "--n-random must be between 1 and 10,000"),
        ("24_compare_circuits.py", ["--n-resamples", "100000000"], "--n-resamples must be between 2 and 1,000"),
        ("08_attribution_vs_patching.py", ["--curves", "5000"], "--curves must be between 0 and 1,000"),
    ],
)
def test_counts_with_an_extra_digit_refused_before_the_model_loads(tmp_path, script, args, message):
    refused(run_cli(script, "--tasks", "ioi", "--model", "./no-such-model", *args, "--out", str(tmp_path)), message)


def test_eap_reports_progress_through_mibs_circuits(tmp_path):
    """The area curves evaluate (n_random + 2) x 10 circuits after the faithfulness curve: a run writing to a
    file printed nothing for minutes there."""
    r = run_cli(
        "05_eap.py",
        "--tasks",
        "ioi",
        *TOY,
        "--n-prompts",
        "6",
        "--n-random",
        "2",
        "--n-bootstrap",
        "0",
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "circuits at MIB's sizes" in line]
    assert lines and lines[-1].startswith("ioi: circuits at MIB's sizes: 40/40 circuit (100%)"), r.stderr


def test_a_line_break_inside_a_value_stays_one_line(tmp_path):
    """A path typed with a carriage return or form feed (hypothesis found these) is echoed escaped."""
    for value in ("/no/such\rtask.csv", "/no/such\x0ctask.csv", "/no/such\u2028task.csv"):
        r = run_cli("02_logit_diff.py", "--tasks", value, "--out", str(tmp_path))
        refused(r, "does not exist")
        assert len(r.stderr.splitlines()) == 1
