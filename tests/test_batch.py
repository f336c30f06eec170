"""batch.py: grid expansion, refusal before any work, a real toy grid (local executor, 2 jobs), rerun and
resume after SIGTERM, a failing cell, the SLURM path through submitit's local executor, seed folding."""

import contextlib
import io
import json
import signal
import time

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from lib.batch import grid
from lib.batch.aggregate import t_interval

SMOKE = """
[defaults]
model = "toy"
n-prompts = 4
device = "cpu"

[[experiment]]
script = "01_dla.py"
tasks = ["ioi", "sva"]
seed = [0, 1]
"""


def batch(*args):
    """batch.py's entry point in this process: (exit code, stdout, stderr)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("batch_cli", ROOT / "batch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            module.main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def test_expansion_products_defaults_overrides():
    cells = grid.expand(
        {
            "defaults": {"model": "toy", "seed": [0, 1], "n_prompts": 8},
            "experiment": [
                {"script": "21_output_variants.py", "tasks": ["ioi", "sva"], "ablation": ["resample", "mean"]},
                {"script": "06_acdc.py", "tasks": "all", "seed": 5, "thresholds": "0.01 0.1"},
            ],
        }
    )
    assert len(cells) == 2 * 2 * 2 + 4
    first = cells[0]
    assert dict(first.options) == {"tasks": "ioi", "model": "toy", "seed": 0, "n-prompts": 8, "ablation": "resample"}
    assert first.argv() == [
        "--tasks",
        "ioi",
        "--model",
        "toy",
        "--seed",
        "0",
        "--n-prompts",
        "8",
        "--ablation",
        "resample",
    ]
    acdc = [c for c in cells if c.script == "06_acdc.py"]
    assert [c.task for c in acdc] == ["ioi", "sva", "docstring", "greater-than"]
    assert dict(acdc[0].options)["seed"] == 5 and acdc[0].argv()[-3:] == ["--thresholds", "0.01", "0.1"]
    assert len({c.id for c in cells}) == len(cells)
    # the id is a hash of the script and the option set, not of the order they were written in
    same = grid.Cell("21_output_variants.py", tuple(reversed(first.options)), 9)
    assert same.id == first.id


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[[experiment]]\nscript = "21_output_variants.py"\nablation = "foo"',
            "experiment 1, cell 21_output_variants.py tasks=ioi ablation=foo: unknown ablation 'foo'",
        ),
        ('[[experiment]]\nscript = "21_output_variants.py"\nbogus = 1', "No such option: --bogus"),
        ('[[experiment]]\nscript = "99_nothing.py"', "experiment 1: unknown script '99_nothing.py'"),
        ('[[experiment]]\nscript = "01_dla.py"\nout = "x"', "option out is set by the runner"),
        ('[[experiment]]\nscript = "06_acdc.py"\nthresholds = "nan"', "--thresholds must be a finite number"),
        ('[defaults]\nseed = []\n[[experiment]]\nscript = "01_dla.py"', "option seed has an empty list"),
        ("[[experiment]\n", "is not valid TOML"),
        ('[defaults]\nmodel = "toy"', "needs at least one [[experiment]] table"),
    ],
)
def test_bad_grid_refused_before_any_work(tmp_path, text, message):
    (tmp_path / "g.toml").write_text(text)
    code, out, err = batch("run", str(tmp_path / "g.toml"), "--out", str(tmp_path / "out"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "out").exists()


def test_across_seed_interval_by_hand():
    mean, std, lo, hi = t_interval(np.array([1.0, 2.0, 3.0, 4.0]))
    # mean 2.5, s = sqrt(5/3), t_{0.975, 3} = 3.182446305 (tables), half-width = t * s / 2
    half = 3.182446305284263 * np.sqrt(5 / 3) / 2
    assert mean == 2.5 and np.isclose(std, np.sqrt(5 / 3)) and np.isclose(lo, 2.5 - half) and np.isclose(hi, 2.5 + half)
    assert np.isnan(t_interval(np.array([1.0]))[2])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke grid run once, uninterrupted, with 2 local jobs; beside it (their start-up overlaps) a second run
    as its own process, stopped by SIGTERM once one cell is done (test_sigterm_then_rerun_finishes_only_the_rest)."""
    import threading

    from lib.batch.forked import ForkedScript

    where = tmp_path_factory.mktemp("batch")
    (where / "smoke.toml").write_text(SMOKE)
    b, log = where / "b", where / "b.log"
    args = ["run", str(where / "smoke.toml"), "--out", str(b), "--jobs", "2"]
    stopped = ForkedScript(str(ROOT / "batch.py"), args, log, cwd=ROOT, env={"HF_HUB_OFFLINE": "1"})
    # and one cell through the SLURM code path (test_slurm_path_through_submitit_local_executor)
    one = SMOKE.replace('tasks = ["ioi", "sva"]', 'tasks = ["ioi"]').replace("seed = [0, 1]", "seed = [1]")
    (where / "one.toml").write_text(one)
    args = ["run", str(where / "one.toml"), "--out", str(where / "c"), "--executor", "submitit-local"]
    args += ["--cpus-per-task", "1", "--timeout-min", "20"]
    slurm = ForkedScript(str(ROOT / "batch.py"), args, where / "c.log", cwd=ROOT, env={"HF_HUB_OFFLINE": "1"})

    def stop_after_one_cell():
        t0 = time.time()
        while time.time() - t0 < 300 and stopped.poll() is None:
            if (b / "manifest.csv").is_file() and (pd.read_csv(b / "manifest.csv").state == "done").sum() >= 1:
                stopped.send_signal(signal.SIGTERM)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=stop_after_one_cell)
    watcher.start()
    t0 = time.time()
    code, out, err = batch("run", str(where / "smoke.toml"), "--out", str(where / "a"), "--jobs", "2")
    seconds = time.time() - t0
    watcher.join()
    stopped.wait(120)
    assert code == 0, err + out
    return where, seconds, out, stopped, slurm


def test_smoke_grid_end_to_end(smoke_run):
    where, seconds, out, _, _ = smoke_run
    a = where / "a"
    m = pd.read_csv(a / "manifest.csv")
    assert len(m) == 4 and (m.state == "done").all() and m.run_dir.str.contains("01_dla/").all()
    s = pd.read_csv(a / "summary.csv")
    assert set(s.metric) == {"model_logit_diff", "dla_max_abs_error"} and len(s) == 4 * 2
    assert {"cell_id", "script", "task", "model", "seed", "value", "ci_low", "ci_high"} <= set(s.columns)
    assert "wall_seconds" not in s.columns  # timings stay in the manifest
    folded = pd.read_csv(a / "summary_by_seed.csv")
    assert len(folded) == 2 * 2 and (folded.n_seeds == 2).all() and (folded.seeds == "0 1").all()
    for (task, metric), d in s.groupby(["task", "metric"]):
        row = folded[(folded.task == task) & (folded.metric == metric)].iloc[0]
        assert np.isclose(row["mean"], d.value.mean()) and np.isclose(row["std"], d.value.std(ddof=1))
    md, tex = (a / "tables.md").read_text(), (a / "tables.tex").read_text()
    assert "## 01_dla.py" in md and "| ioi" in md and "| sva" in md and "±" in md
    assert "\\begin{tabular}" in tex and "ioi" in tex and "sva" in tex
    assert (a / "plots" / "01_dla.png").is_file()
    record = json.loads((a / "batch.json").read_text())
    assert record["grid"] == SMOKE and len(record["cells"]) == 4 and record["executor"]["jobs"] == 2
    # a rerun runs nothing and gives the same summary, byte for byte
    before = (a / "summary.csv").read_bytes()
    code, out, err = batch("run", str(where / "smoke.toml"), "--out", str(a), "--jobs", "2")
    assert code == 0 and "0 of 4 cells to run" in out, err
    assert (a / "summary.csv").read_bytes() == before
    code, out, err = batch("status", str(a))
    assert code == 0 and out.startswith("done=4 failed=0 interrupted=0 pending=0")


def test_sigterm_then_rerun_finishes_only_the_rest(smoke_run):
    where, _, _, stopped, _ = smoke_run
    b, log = where / "b", where / "b.log"
    assert stopped.returncode == 143, log.read_text()
    assert "rerun the same command to continue" in log.read_text()
    m = pd.read_csv(b / "manifest.csv")
    finished = int((m.state == "done").sum())
    assert 1 <= finished < 4 and not m.state.isin(["running"]).any()
    code, out, err = batch("run", str(where / "smoke.toml"), "--out", str(b), "--jobs", "2")
    assert code == 0 and f"{4 - finished} of 4 cells to run" in out, err + out
    assert (b / "summary.csv").read_bytes() == (where / "a" / "summary.csv").read_bytes()


def test_exit_codes_of_concurrent_forked_scripts(tmp_path):
    """Cells started and waited for from several threads at once all report their own exit code: before the
    lock in lib.batch.forked, about 1 in 120 read 255 (two threads reading one exit code; a CI run lost a
    finished smoke cell so), failing this test about 9 times in 10."""
    from concurrent.futures import ThreadPoolExecutor

    from lib.batch.forked import ForkedScript

    (tmp_path / "exit3.py").write_text("import sys\nsys.exit(3)\n")

    def one(i):
        return ForkedScript(str(tmp_path / "exit3.py"), [], tmp_path / f"log{i}").wait(120)

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(300)))
    assert codes == [3] * 300


def test_failing_cell_recorded_while_others_finish(tmp_path):
    """A circuit file that parses but does not fit the model fails in its cell, with its error line."""
    (tmp_path / "c.json").write_text('{"edges": [{"edge": "a9.h9->logits"}]}')
    (tmp_path / "g.toml").write_text(f"""
[defaults]
model = "toy"
n-prompts = 4
[[experiment]]
script = "01_dla.py"
tasks = ["ioi"]
[[experiment]]
script = "21_output_variants.py"
tasks = ["ioi"]
circuit = "{tmp_path / "c.json"}"
""")
    code, out, err = batch("run", str(tmp_path / "g.toml"), "--out", str(tmp_path / "out"), "--jobs", "2")
    (line,) = err.strip().splitlines()  # the run did not succeed: exit 1, one line saying so
    assert code == 1 and line.startswith("error: 1 of 2 cells did not finish (done=1 failed=1"), err
    assert (tmp_path / "out" / "summary.csv").is_file()  # the finished cell is still summarized
    m = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert list(m.state) == ["done", "failed"]
    assert "edge 'a9.h9->logits' does not exist in a 4-layer, 4-head model" in m.error[1]
    code, out, err = batch("status", str(tmp_path / "out"))
    assert "done=1 failed=1" in out and "a9.h9->logits" in out
    code, out, err = batch(
        "run", str(tmp_path / "g.toml"), "--out", str(tmp_path / "out"), "--only-failed", "--dry-run"
    )
    assert "1 of 2 cells would run" in out


def test_slurm_path_through_submitit_local_executor(smoke_run):
    """The SLURM code path (submitit job array), run by submitit's local executor on one of the smoke grid's
    cells (a fresh interpreter, as on a cluster node): the same cell and the same numbers as the local run."""
    where, _, _, _, slurm = smoke_run
    assert slurm.wait(600) == 0, (where / "c.log").read_text()
    a, c = pd.read_csv(where / "a" / "manifest.csv"), pd.read_csv(where / "c" / "manifest.csv")
    assert len(c) == 1 and (c.state == "done").all() and set(c.cell_id) <= set(a.cell_id)
    for cell, run_dir in zip(c.cell_id, c.run_dir):
        local = a.run_dir[a.cell_id == cell].iloc[0]
        for name in ("headline.csv", "dla.csv"):
            assert (where / "c" / run_dir / name).read_bytes() == (where / "a" / local / name).read_bytes()
    ours = pd.read_csv(where / "c" / "summary.csv")
    theirs = pd.read_csv(where / "a" / "summary.csv")
    theirs = theirs[theirs.cell_id.isin(ours.cell_id)]
    order = ["cell_id", "metric"]
    pd.testing.assert_frame_equal(
        ours.sort_values(order).reset_index(drop=True), theirs[ours.columns].sort_values(order).reset_index(drop=True)
    )
    assert any((where / "c" / "submitit").iterdir())
