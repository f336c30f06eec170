"""Tasks from files: the built-in IOI exported and run as a file gives the same numbers; hand-written files in
EAP-IG's and MIB's layouts run through 02, 05 and 06; every bad file is one line; a grid records the sha256."""

import contextlib
import hashlib
import io
import json

import pandas as pd
import pytest
from conftest import ROOT, refused, run_cli

TOY = ["--model", "toy"]
QUICK = [*TOY, "--n-bootstrap", "40", "--quiet"]


def export(*args):
    import lib.tools.export_task as export_module
    from lib.io import cli

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(export_module.app, list(args))
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def the_run(out, script):
    (run,) = (out / script).iterdir()
    return run


def same(a, b, renamed: str, files=()):
    for name in files:
        x, y = pd.read_csv(a / name), pd.read_csv(b / name)
        y["task"] = y["task"].replace(renamed, "ioi")
        pd.testing.assert_frame_equal(x, y, check_exact=True, obj=name)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    where = tmp_path_factory.mktemp("export")
    code, out, err = export("ioi", "--model", "toy", "--n", "60", "--out", str(where / "ioi_pairs.csv"))
    assert code in (0, None), err
    return where / "ioi_pairs.csv"


def test_export_refuses_to_overwrite(exported):
    code, _, err = export("ioi", "--model", "toy", "--out", str(exported))
    assert code == 2 and "exists; it is never overwritten" in err


def test_exported_ioi_as_a_file_gives_the_builtin_numbers(exported, tmp_path):
    """The identity that proves the path: 05 and 02 on the file equal --tasks ioi, value for value."""
    args = ["--n-prompts", "12", "--n-random", "2", *QUICK]
    assert run_cli("05_eap.py", "--tasks", "ioi", *args, "--out", str(tmp_path / "a")).returncode == 0
    r = run_cli("05_eap.py", "--tasks", str(exported), *args, "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    a, b = the_run(tmp_path / "a", "05_eap"), the_run(tmp_path / "b", "05_eap")
    same(a, b, "ioi_pairs", ["edge_scores.csv", "faithfulness_curve.csv", "area.csv", "mib_curve.csv"])
    circuit = b / "circuit_ioi_pairs_top100.json"  # the same circuit evaluated by 02 on both
    for task, out in (("ioi", "c"), (str(exported), "d")):
        r = run_cli(
            "02_logit_diff.py",
            "--tasks",
            task,
            "--n-prompts",
            "12",
            "--circuit",
            str(circuit),
            *QUICK,
            "--out",
            str(tmp_path / out),
        )
        assert r.returncode == 0, r.stderr
    c, d = the_run(tmp_path / "c", "02_logit_diff"), the_run(tmp_path / "d", "02_logit_diff")
    x, y = pd.read_csv(c / "items.csv"), pd.read_csv(d / "items.csv")
    for column in ("metric_clean", "metric_corrupted", "metric_circuit"):
        assert x[column].tolist() == y[column].tolist()
    record = json.loads((d / "run.json").read_text())["task_files"]["ioi_pairs"]
    assert record["format"] == "text-pairs" and record["sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
    assert record["rows_used"] == 12 and record["rows_dropped"] == 0


def toy_ids(words):
    from lib.core.model import tokenizer_of

    tokenizer = tokenizer_of("toy")
    return [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]


PAIRS = [
    ("Mary", "John", "Kevin"),
    ("Sarah", "David", "Paul"),
    ("Lisa", "Brian", "James"),
    ("Michael", "Jessica", "Robert"),
]
IOI_ROWS = [
    (
        f"Then, {a} and {b} went to the {place}. {b} gave a drink to",
        f"Then, {a} and {b} went to the {place}. {c} gave a drink to",
        f" {a}",
        f" {b}",
    )
    for place in ("store", "school", "office")
    for a, b, c in PAIRS
]  # 12 distinct rows


def hand_files(where):
    """Files written by hand in each peer's layout (the ids are the toy tokenizer's, looked up here)."""
    ids = toy_ids([r[2] for r in IOI_ROWS] + [r[3] for r in IOI_ROWS])
    n = len(IOI_ROWS)
    lines = ["clean,corrupted,correct_idx,incorrect_idx"] + [
        f'"{c}","{k}",{ids[i][0]},"[{ids[n + i][0]}]"' for i, (c, k, _, _) in enumerate(IOI_ROWS)
    ]
    (where / "eapig_ids.csv").write_text("\n".join(lines) + "\n")
    nouns = "abduction accord affair agreement appraisal assaults assessment attack attempts campaign".split()
    years = list(zip(nouns, (1732, 1453, 1645, 1577, 1236, 1368, 1412, 1524, 1689, 1745)))  # 10 distinct rows
    lines = ["clean,corrupted,label"] + [
        f'"The {w} lasted from the year {y} to the year {y // 100}",'
        f'"The {w} lasted from the year {y // 100}01 to the year {y // 100}",{y % 100}'
        for w, y in years
    ]
    (where / "eapig_label.csv").write_text("\n".join(lines) + "\n")
    mib = [
        {
            "prompt": c,
            "metadata": {"indirect_object": io_.strip(), "subject": s.strip(), "random_c": "Kevin"},
            "s2_io_flip_counterfactual": {"prompt": k},
            "abc_counterfactual": {"prompt": k},
        }
        for c, k, io_, s in IOI_ROWS
    ]
    (where / "mib_ioi").mkdir()
    (where / "mib_ioi" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mib))
    return [where / "eapig_ids.csv", where / "eapig_label.csv", where / "mib_ioi"]


@pytest.mark.parametrize(
    "script, extra",
    [
        ("02_logit_diff.py", []),
        ("05_eap.py", ["--n-random", "1"]),
        ("06_acdc.py", ["--thresholds", "0.1", "--n-random", "1", "--prune-with", "eap", "--prune-top", "40"]),
    ],
)
def test_hand_written_peer_files_run(tmp_path, script, extra):
    """The three peer formats as three tasks of one run (one model load; 06 with MIB's format only)."""
    paths = hand_files(tmp_path)
    if script == "06_acdc.py":  # the formats are read by the shared task reader; 06 shows a file task runs there
        paths = paths[2:]
    r = run_cli(script, "--tasks", *map(str, paths), "--n-prompts", "5", *QUICK, *extra, "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    run = the_run(tmp_path / "out", script.removesuffix(".py"))
    records = json.loads((run / "run.json").read_text())["task_files"]
    data = pd.read_csv(run / "dataset.csv")
    assert set(data.task) == {p.stem for p in paths} and (data.prompts_dropped == 0).all()
    for path in paths:
        record = records[path.stem]
        assert (
            record["format"]
            == {"eapig_ids": "eap-ig-ids", "eapig_label": "eap-ig-label", "mib_ioi": "mib-ioi"}[path.stem]
        )
        assert record["metric"] == ("prob_diff" if "label" in path.stem else "logit_diff")


def test_the_label_format_is_hannas_greater_than_metric(tmp_path):
    """EAP-IG's label YY: correct = the years after YY, wrong = 00..YY, as the built-in greater-than task."""
    from lib.core.model import tokenizer_of
    from tasks import TASKS
    from tasks.greater_than import year_tokens

    hand_files(tmp_path)
    from lib.io import cli

    cli.parse_tasks(str(tmp_path / "eapig_label.csv"))
    tokenizer = tokenizer_of("toy")
    data = TASKS["eapig_label"].build(tokenizer, 4, 0)
    years = year_tokens(tokenizer)
    first = [t for t in data.correct[0].tolist() if t >= 0]
    assert first == [years[y] for y in range(33, 100)] and data.metric_kind == "prob_diff"
    assert [t for t in data.wrong[0].tolist() if t >= 0] == [years[y] for y in range(0, 33)]


def test_rows_that_break_a_rule_are_dropped_counted_and_explained(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [{"clean": c, "corrupted": k, "correct": [a], "wrong": [b]} for c, k, a, b in IOI_ROWS[:4]]
    rows.append(
        {
            "clean": "Then, Mary and John went to the store. John gave a drink to",
            "corrupted": "Then, Mary and John went to the big store. John gave a drink to",
            "correct": " Mary",
            "wrong": " John",
        }
    )  # unequal lengths
    rows.append({**rows[0], "correct": [" Mary John"]})  # an answer of two tokens
    # rows that can carry no signal: a null prompt, the right answer among the wrong ones, nothing corrupted
    rows.append({**rows[0], "clean": None})
    rows.append({**rows[1], "wrong": [rows[1]["correct"][0]]})
    rows.append({**rows[2], "corrupted": rows[2]["clean"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run_cli("01_dla.py", "--tasks", str(path), "--n-prompts", "10", *QUICK, "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    run = the_run(tmp_path / "o", "01_dla")
    data = pd.read_csv(run / "dataset.csv")
    assert len(data) == 4 and (data.prompts_dropped == 5).all()
    assert list(data.file_row) == [1, 2, 3, 4]
    assert data.drop_reasons[0] == (
        "a null, empty or non-text prompt: 1; an answer that is also a wrong answer (the metric cannot tell them "
        "apart): 1; an answer that is not one token: 1; clean and corrupted prompts of unequal token length: 1; "
        "identical clean and corrupted prompts (nothing to patch): 1"
    )
    record = json.loads((run / "run.json").read_text())["task_files"]["mixed"]
    assert record["rows_used"] == 4 and record["rows_dropped"] == 5


@pytest.mark.parametrize(
    "script", ["01_dla.py", "02_logit_diff.py", "05_eap.py", "09_feature_circuits.py", "10_attribution_graphs.py"]
)
def test_a_task_with_no_signal_is_refused_in_every_script(tmp_path, script):
    """wrong = correct on every row (the metric is 0 everywhere) or clean = corrupted: nothing to measure."""
    same_answer = [(c, k, a, a) for c, k, a, _ in IOI_ROWS]
    unpatched = [(c, c, a, b) for c, _, a, b in IOI_ROWS]
    for name, rows, reason in (
        ("same_answer", same_answer, "an answer that is also a wrong answer"),
        ("unpatched", unpatched, "identical clean and corrupted prompts"),
    ):
        path = tmp_path / f"{name}.csv"
        pd.DataFrame(rows, columns=["clean", "corrupted", "correct", "wrong"]).to_csv(path, index=False)
        r = run_cli(script, "--tasks", str(path), *TOY, "--out", str(tmp_path / "o"))
        refused(r, f"no row satisfies this tokenizer's rules ({reason}")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.csv"))


def bad_files(where):
    (where / "empty.csv").write_text("")
    (where / "header_only.csv").write_text("clean,corrupted,correct,wrong\n")
    (where / "latin1.csv").write_bytes('clean,corrupted,correct,wrong\n"caf\xe9",b,c,d\n'.encode("latin-1"))
    (where / "columns.csv").write_text("prompt,answer\nx,y\n")
    (where / "ragged.csv").write_text("clean,corrupted,correct,wrong\na,b,c\n")
    (where / "metrics.csv").write_text("clean,corrupted,correct,wrong,metric\na,b,c,d,logit_diff\na,b,c,d,prob_diff\n")
    (where / "ioi.csv").write_text("clean,corrupted,correct,wrong\na,b,c,d\n")
    (where / "folder").mkdir()
    (where / "bad.jsonl").write_text('{"clean": "a"}\nnot json\n')
    (where / "label.csv").write_text("clean,corrupted,label\na,b,5\n")
    return {
        "missing.csv": "task file {w}/missing.csv does not exist",
        "empty.csv": "task file {w}/empty.csv is empty",
        "header_only.csv": "task file {w}/header_only.csv has no rows",
        "latin1.csv": "is not UTF-8 text",
        "columns.csv": "no known format fits its columns (answer, prompt)",
        "ragged.csv": "line 2: the row has not as many fields as the header",
        "metrics.csv": "its metric column names several metrics (logit_diff, prob_diff)",
        "ioi.csv": "its name 'ioi' is a built-in task's; rename the file",
        "folder": "holds no .parquet, .jsonl or .json data files",
        "bad.jsonl": "line 2: not a JSON object",
    }


def test_bad_files_are_one_line_before_the_model_loads(tmp_path):
    for name, message in bad_files(tmp_path).items():
        r = run_cli(
            "02_logit_diff.py",
            "--tasks",
            str(tmp_path / name),
            "--model",
            "./no-such-model",
            "--out",
            str(tmp_path / "o"),
        )
        refused(r, message.format(w=tmp_path))
    refused(
        run_cli(
            "02_logit_diff.py",
            "--tasks",
            str(tmp_path / "label.csv"),
            "--task-metric",
            "logit_diff",
            "--out",
            str(tmp_path / "o"),
        ),
        "the label format is scored by prob_diff",
    )
    refused(
        run_cli("02_logit_diff.py", "--tasks", "ioi", "--task-metric", "prob_diff", "--out", str(tmp_path / "o")),
        "--task-metric applies to tasks from files only",
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.csv").write_text("clean,corrupted,correct,wrong\na,b,c,d\n")
    (tmp_path / "x.csv").write_text("clean,corrupted,correct,wrong\na,b,c,d\n")
    refused(
        run_cli(
            "02_logit_diff.py",
            "--tasks",
            str(tmp_path / "x.csv"),
            str(tmp_path / "a" / "x.csv"),
            "--out",
            str(tmp_path / "o"),
        ),
        "have the same name 'x'",
    )
    refused(
        run_cli("02_logit_diff.py", "--tasks", "mib:ioi", "--out", str(tmp_path / "o")),
        "cannot load mib:ioi from the Hugging Face hub (offline or unreachable)",
    )
    assert not (tmp_path / "o").exists()


def test_ids_of_another_tokenizer_are_refused(tmp_path):
    (tmp_path / "gpt2_ids.csv").write_text(
        'clean,corrupted,correct_idx,incorrect_idx\n"Then, Mary and John went to '
        'the store. John gave a drink to","Then, Mary and John went to the store. '
        'Kevin gave a drink to",5335,1757\n'
    )
    r = run_cli("02_logit_diff.py", "--tasks", str(tmp_path / "gpt2_ids.csv"), *TOY, "--out", str(tmp_path / "o"))
    refused(r, "correct_idx 5335 is not a token of this tokenizer")


def test_grid_with_a_task_file_records_its_sha256(exported, tmp_path):
    from test_batch import batch

    (tmp_path / "g.toml").write_text(
        f'[defaults]\nmodel = "toy"\nn-prompts = 4\n[[experiment]]\n'
        f'script = "01_dla.py"\ntasks = ["{exported}", "ioi"]\n'
    )
    code, out, err = batch("run", str(tmp_path / "g.toml"), "--out", str(tmp_path / "b"))
    assert code == 0, err + out
    runs = list((tmp_path / "b" / "runs").glob("*/01_dla/*/run.json"))
    records = [json.loads(p.read_text()) for p in runs]
    files = [r["task_files"]["ioi_pairs"] for r in records if "task_files" in r]
    assert len(runs) == 2 and files[0]["sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
    summary = pd.read_csv(tmp_path / "b" / "summary.csv")
    assert set(summary.task) == {"ioi_pairs", "ioi"}


def test_shipped_example_runs(tmp_path):
    """As the README says, with the default --n-prompts (100): its 100 rows split 50/50 into discovery and held-out."""
    r = run_cli(
        "05_eap.py",
        "--tasks",
        str(ROOT / "tasks" / "examples" / "ioi_pairs.csv"),
        "--n-random",
        "1",
        "--top-k",
        "10",
        *QUICK,
        "--out",
        str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    data = pd.read_csv(the_run(tmp_path, "05_eap") / "dataset.csv")
    assert data.split.value_counts().to_dict() == {"discovery": 50, "held-out": 50}


def test_mib_mcqa_and_arithmetic_rows_as_mibs_loader_builds_them(tmp_path, gpt2_tokenizer):
    """Answers as MIB's HFEAPDataset.__getitem__ takes them: MCQA/ARC the choice label (no leading space) of
    the answer and of the counterfactual's answer; arithmetic str(label) of each."""
    from lib.io import cli
    from tasks import TASKS

    q = "Question: What color is the sky? A. blue B. red C. green D. black Answer:"
    cf = "Question: What color is the sky? A. red B. blue C. green D. black Answer:"
    mcqa = [
        {
            "prompt": q,
            "choices": {"label": ["A", "B", "C", "D"], "text": ["blue", "red", "green", "black"]},
            "answerKey": 0,
            "symbol_counterfactual": {"prompt": cf, "choices": {"label": ["A", "B", "C", "D"]}, "answerKey": 1},
        }
    ]
    arithmetic = [
        {
            "prompt": "What is 12 plus 7? Answer:",
            "label": 19,
            "operator": "+",
            "random_counterfactual": {"prompt": "What is 23 plus 9? Answer:", "label": 32},
        }
    ]
    for name, rows in (("mcqa", mcqa), ("arith", arithmetic)):
        (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    cli.parse_tasks(f"{tmp_path / 'mcqa.json'}\n{tmp_path / 'arith.json'}")
    ids = lambda text: gpt2_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    data = TASKS["mcqa"].build(gpt2_tokenizer, 5, 0)
    assert data.correct[0, 0] == ids("A")[0] and data.wrong[0, 0] == ids("B")[0] and len(data) == 1
    data = TASKS["arith"].build(gpt2_tokenizer, 5, 0)
    assert data.correct[0, 0] == ids("19")[0] and data.wrong[0, 0] == ids("32")[0]
    assert data.info.group[0] == "+" and data.metric_kind == "logit_diff"


def test_a_local_copy_of_mibs_parquet_files_loads(tmp_path):
    """MIB publishes its task data as a hub dataset: a local copy is a folder of parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks import files

    rows = [
        {
            "prompt": c,
            "metadata": {"indirect_object": a.strip(), "subject": b.strip(), "random_c": "Kevin"},
            "s2_io_flip_counterfactual": {"prompt": k},
        }
        for c, k, a, b in IOI_ROWS
    ]
    (tmp_path / "mib_ioi" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:6]), tmp_path / "mib_ioi" / "data" / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[6:]), tmp_path / "mib_ioi" / "data" / "train-00001-of-00002.parquet")
    name = files.register(str(tmp_path / "mib_ioi"))
    source = files.SOURCES[name]
    assert name == "mib_ioi" and source.format == "mib-ioi" and len(source.rows) == len(rows)
    assert source.rows[6]["prompt"] == rows[6]["prompt"]  # the files in name order
    r = run_cli(
        "01_dla.py", "--tasks", str(tmp_path / "mib_ioi"), "--n-prompts", "6", *QUICK, "--out", str(tmp_path / "o")
    )
    assert r.returncode == 0, r.stderr


def test_a_builtin_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    from lib.io import cli
    from tasks import files

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ioi").mkdir()
    assert cli.parse_tasks("ioi") == ["ioi"] and not files.SOURCES


# every script that discovers a circuit on some prompts and evaluates it on others (05/06/09/10/24 always; 02, 04,
# 21, 22 and 23 under --circuit auto, their default)
SPLITTING = {  # script: options that only set how much work is done (the split's defaults, --n-prompts, are kept)
    "02_logit_diff.py": ["--n-bootstrap", "40"],
    "04_causal_scrubbing.py": ["--n-bootstrap", "40", "--n-seeds", "1"],
    "05_eap.py": ["--n-bootstrap", "40", "--n-random", "0", "--top-k", "10"],
    "06_acdc.py": ["--thresholds", "0.1", "--n-random", "0", "--n-bootstrap", "40"],
    "09_feature_circuits.py": [
        "--n-bootstrap",
        "40",
        "--n-random",
        "0",
        "--edge-threshold",
        "1e9",
        *["--method", "attrib"],
    ],
    "10_attribution_graphs.py": ["--n-graphs", "1", "--n-bootstrap", "40"],
    "21_output_variants.py": ["--n-bootstrap", "40"],
    "22_hypothesis_tests.py": ["--n-random", "10", "--n-permutations", "40"],
    "23_robustness.py": ["--n-bootstrap", "40"],
    "24_compare_circuits.py": ["--n-resamples", "2", "--thresholds", "0.1", "--n-bootstrap", "40", "--ig-steps", "2"],
}


def first_rows(where, n: int):
    """The shipped example file cut to its first n data rows."""
    lines = (ROOT / "tasks" / "examples" / "ioi_pairs.csv").read_text().splitlines()
    path = where / f"ioi{n}.csv"
    path.write_text("\n".join(lines[: n + 1]) + "\n")
    return path


@pytest.mark.parametrize("script", SPLITTING)
def test_a_30_row_file_runs_with_default_options(tmp_path, script):
    """Fewer rows than 2 x --n-prompts (its default): split in halves as 05 splits them, the split in run.json."""
    path = first_rows(tmp_path, 30)
    r = run_cli(script, "--tasks", str(path), *TOY, *SPLITTING[script], "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "ioi30: 30 usable prompts, fewer than 2 x --n-prompts (" in r.stderr
    assert "split in halves, 15 to discover the circuit and 15 to evaluate it" in r.stderr
    record = json.loads((the_run(tmp_path / "out", script.removesuffix(".py")) / "run.json").read_text())
    split = record["splits"]["ioi30"]
    assert split["halved"] and split["n_discovery"] == split["n_held_out"] == 15
    assert split["discovery_rows"] == list(range(1, 16)) and split["held_out_rows"] == list(range(16, 31))
    if "circuits" in record:  # the evaluating scripts: the circuit was found on the first half only
        assert record["circuits"]["ioi30"]["n_discovery"] == 15


@pytest.mark.parametrize("script", SPLITTING)
def test_a_3_row_file_is_refused_naming_the_count_that_works(tmp_path, script):
    r = run_cli(script, "--tasks", str(first_rows(tmp_path, 3)), "--model", "toy", "--out", str(tmp_path / "out"))
    refused(
        r,
        "task ioi3: 3 usable prompt(s); discovering a circuit on some prompts and evaluating it on others "
        "needs at least 4 (2 and 2)",
    )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.csv"))


def test_two_files_in_one_quoted_value_are_two_tasks_like_two_names(tmp_path):
    from lib.io import cli

    a, b = first_rows(tmp_path, 5), tmp_path / "second.csv"
    b.write_text(a.read_text())
    assert cli.parse_tasks(f"{a} {b}") == ["ioi5", "second"]  # as `--tasks "a.csv b.csv"` arrives
    assert cli.parse_tasks(f"{a},ioi") == ["ioi5", "ioi"]
    assert cli.parse_tasks("ioi sva") == ["ioi", "sva"]
    spaced = tmp_path / "with space.csv"
    spaced.write_text(a.read_text())
    assert cli.parse_tasks(str(spaced)) == ["with space"]  # an existing path stays one file


def test_n_prompts_0_is_named_before_n_graphs(tmp_path):
    r = run_cli("10_attribution_graphs.py", *TOY, "--n-prompts", "0", "--out", str(tmp_path))
    refused(r, "--n-prompts must be at least 1 (got 0)")
