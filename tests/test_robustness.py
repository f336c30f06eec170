"""Signals, resume, input validation and readable logs (each case failed before this was built)."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

TOY = ["--model", "toy"]


def run_dirs(out, script):
    base = out / script
    return sorted(base.iterdir()) if base.exists() else []


def one_error_line(r, message):
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def start_script(script, *args, log):
    """A script as its own process and session (as SLURM or `timeout` runs it), stderr to a log file; forked
    from the server that holds the heavy imports (lib.batch.forked), as batch.py starts its cells."""
    import torch

    from lib.batch.forked import ForkedScript

    # this process's thread count, so that its reductions (and CSVs) match the in-process runs compared with it
    return ForkedScript(script, list(args), Path(os.devnull), Path(log.name), cwd=ROOT, threads=torch.get_num_threads())


def wait_for_line(path, needle, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if needle in path.read_text():
            return
        assert proc.poll() is None, path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} never appeared: {path.read_text()}")


def csv_bytes(run):
    return {
        p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.suffix in (".csv", ".json") and p.name != "run.json"
    }


ACDC_ARGS = ["--tasks", "sva", *TOY, "--n-prompts", "8", "--thresholds", "0.01", "0.1", "--n-random", "1"]


def test_sigterm_during_acdc_then_resume_equals_uninterrupted(tmp_path):
    r = run_cli("06_acdc.py", *ACDC_ARGS, "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    (whole,) = run_dirs(tmp_path / "a", "06_acdc")
    # stderr is not a terminal: plain progress lines, bounded, no carriage returns or escapes
    assert "\r" not in r.stderr and "\x1b" not in r.stderr
    assert len(r.stderr.splitlines()) < 200 * 2

    log = tmp_path / "log.txt"
    with log.open("w") as f:
        proc = start_script("06_acdc.py", *ACDC_ARGS, "--out", str(tmp_path / "b"), log=f)
        wait_for_line(log, "sva tau=0.01: edges tried: 96/479", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("error: interrupted by SIGTERM; finished work kept in ") and "--resume" in last, last
    (kept,) = run_dirs(tmp_path / "b", "06_acdc")
    assert kept.name.endswith(".interrupted") and last.endswith(
        f"continue with: uv run python 06_acdc.py --resume {kept}"
    )
    states = list((kept / ".units").glob("sva_tau0.01.state.pkl"))
    assert states, "the search state of the threshold in flight was checkpointed on SIGTERM"

    r = run_cli("06_acdc.py", "--resume", str(kept))
    assert r.returncode == 0, r.stderr
    (final,) = run_dirs(tmp_path / "b", "06_acdc")
    assert final.name == kept.name.removesuffix(".interrupted")  # the normal, visible run id
    assert csv_bytes(final) == csv_bytes(whole)
    record = json.loads((final / "run.json").read_text())
    assert record["resumed"] and "checkpoint.json" not in record["files"] and not (final / ".units").exists()


def test_sigkill_then_resume_of_the_staging_directory(tmp_path):
    args = ["--tasks", "ioi", "sva", *TOY, "--n-prompts", "6", "--direction", "noise"]
    r = run_cli("03_activation_patching.py", *args, "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    (whole,) = run_dirs(tmp_path / "a", "03_activation_patching")
    log = tmp_path / "log.txt"
    with log.open("w") as f:
        proc = start_script("03_activation_patching.py", *args, "--out", str(tmp_path / "b"), log=f)
        wait_for_line(log, "sva noise: heads+MLPs", proc)  # ioi is finished and checkpointed
        proc.kill()
        proc.wait(timeout=60)
    (staged,) = [p for p in (tmp_path / "b" / "03_activation_patching").iterdir()]
    assert staged.name.startswith(".staging-") and (staged / ".units" / "ioi.pkl").is_file()
    r = run_cli("03_activation_patching.py", "--resume", str(staged))
    assert r.returncode == 0, r.stderr
    assert "ioi noise" not in r.stderr  # the finished task was not redone
    (final,) = run_dirs(tmp_path / "b", "03_activation_patching")
    assert final.name == staged.name.removeprefix(".staging-")
    assert csv_bytes(final) == csv_bytes(whole)


def test_signal_before_any_work_keeps_nothing(tmp_path):
    from lib.io import cli

    app = cli.script_app("terminated")

    @app.command()
    def main(out: cli.OutOpt = tmp_path / "res", resume: cli.ResumeOpt = None):
        from lib.io.results import RunDir

        run = RunDir(out, "x", {"options": {}}, [])
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except KeyboardInterrupt:
            assert run.suspend() is None  # no unit finished: nothing is kept
            raise

    with pytest.raises(SystemExit) as e:
        cli.main(app, [])
    assert e.value.code == 143 and not (tmp_path / "res").exists()


def test_deferred_section_raises_at_its_end():
    from lib.io import interrupts

    done = []
    with interrupts.handled(), pytest.raises(interrupts.Interrupted) as e:
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
            done.append("rest of the section")
    assert done and e.value.code == 129


IOI = ["--tasks", "ioi", *TOY]


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("02_logit_diff.py", [*IOI, "--seed", "99999999999999999999"], "--seed must be between 0 and 4294967295"),
        ("02_logit_diff.py", [*IOI, "--seed", "-1"], "--seed must be between 0"),
        ("02_logit_diff.py", ["--tasks", "all", "foo", *TOY], "--tasks all cannot be combined with task names"),
        (
            "02_logit_diff.py",
            ["--tasks", "--model", "toy"],
            "--tasks needs at least one value (it was followed by --model)",
        ),
        ("06_acdc.py", [*IOI, "--thresholds", "nan"], "--thresholds must be a finite number"),
        ("06_acdc.py", [*IOI, "--thresholds", "0.1", "inf"], "--thresholds must be a finite number"),
        ("05_eap.py", [*IOI, "--threshold", "nan"], "--threshold must be a finite number"),
        ("05_eap.py", [*IOI, "--top-k", "2.5"], "--top-k must be whole numbers"),
        (
            "02_logit_diff.py",
            ["--tasks", "ioi", "--model", "./no-such-dir"],
            "--model ./no-such-dir: no such local directory",
        ),
        ("02_logit_diff.py", [*IOI, "--resume"], "--resume needs the interrupted run's directory"),
    ],
)
def test_bad_options_refused_before_anything(tmp_path, script, args, message):
    r = run_cli(script, *args, "--out", str(tmp_path / "res"))
    assert r.returncode == 2
    one_error_line(r, message)
    assert not (tmp_path / "res").exists()  # nothing written, not even an empty directory


def test_model_that_is_a_file_or_unreadable_dir(tmp_path):
    (tmp_path / "weights.bin").write_text("x")
    r = run_cli("01_dla.py", "--tasks", "ioi", "--model", str(tmp_path / "weights.bin"), "--out", str(tmp_path / "res"))
    assert r.returncode == 2
    one_error_line(r, "is a file; a local model is a directory in Hugging Face format")
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        (broken / name).write_bytes((ROOT / "models" / "toy" / name).read_bytes())
    r = run_cli("01_dla.py", "--tasks", "ioi", "--model", str(broken), "--out", str(tmp_path / "res"))
    assert r.returncode == 2
    # the whole first sentence of the library's multi-line message, and what kind of path was given
    one_error_line(r, "local directory")
    assert "(3) an equivalent slow tokenizer class to instantiate and convert." in r.stderr
    assert not (tmp_path / "res").exists()


def test_failed_model_load_leaves_no_directories(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "fresh" / "results"
    r = run_cli("02_logit_diff.py", "--tasks", "ioi", "--model", "no-such-org/no-such-model", "--out", str(out))
    assert r.returncode == 2 and "as a Hugging Face hub name" in r.stderr
    assert not (tmp_path / "fresh").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is not valid JSON"),
        ("{", "is not valid JSON"),
        ('{"edges": []}', "has no edges"),
        ('{"edges": [{"edge": 3}]}', "each edge must be a name"),
        ("[1, 2]", "has no 'edges' list"),
    ],
)
def test_circuit_file_checked_before_the_model_loads(tmp_path, monkeypatch, content, message):
    """With --model gpt2 offline, a model load would fail first: the circuit error shows it was read before."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "c.json").write_text(content)
    r = run_cli(
        "21_output_variants.py",
        "--tasks",
        "ioi",
        "--model",
        "gpt2",
        "--circuit",
        str(tmp_path / "c.json"),
        "--out",
        str(tmp_path / "res"),
    )
    assert r.returncode == 2
    one_error_line(r, message)
    assert not (tmp_path / "res").exists()


def test_resume_refusals(tmp_path):
    r = run_cli("06_acdc.py", "--resume", str(tmp_path / "nowhere"))
    one_error_line(r, "no such run directory")
    (tmp_path / "empty").mkdir()
    r = run_cli("06_acdc.py", "--resume", str(tmp_path / "empty"))
    one_error_line(r, "not an interrupted run (no checkpoint.json)")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "checkpoint.json").write_text(json.dumps({"script": "05_eap", "argv": []}))
    r = run_cli("06_acdc.py", "--resume", str(tmp_path / "other"))
    one_error_line(r, "that run is of 05_eap, not 06_acdc")
    r = run_cli("06_acdc.py", "--resume", str(tmp_path / "other"), "--seed", "3")
    one_error_line(r, "give no other option")


def test_quiet_has_no_progress(tmp_path):
    r = run_cli("01_dla.py", "--tasks", "ioi", *TOY, "--n-prompts", "4", "--quiet", "--out", str(tmp_path))
    assert r.returncode == 0 and r.stderr == "", r.stderr
