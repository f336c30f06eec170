"""Shared fixtures: the shipped toy model, a tiny random GPT-2 with random biases, the GPT-2 tokenizer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
torch.set_num_threads(2)

FORKING_TESTS = ("test_batch.py", "test_robustness.py")  # tests that fork scripts from lib.batch.forked's server


def pytest_collection_finish(session):
    """Start the forkserver (17 s of imports in its own process) now, so that it is ready, at no wall-clock cost,
    by the time the forking tests run, rather than when the first of them needs it."""
    if any(Path(str(item.fspath)).name in FORKING_TESTS for item in session.items):
        from lib.batch import forked

        forked.start()


@pytest.fixture(autouse=True)
def forget_task_files():
    """Tasks from files live for one command line; a test's must not reach the next test's registry."""
    yield
    from tasks import files

    files.reset()


@pytest.fixture(scope="session")
def toy():
    from lib.core.model import load_model

    return load_model("toy", device="cpu")


@pytest.fixture(scope="session")
def toy_tokenizer(tmp_path_factory):
    """The toy tokenizer, built fresh and loaded from disk like any Hugging Face tokenizer."""
    from transformers import AutoTokenizer

    from lib.tools.toy import build_tokenizer, save_tokenizer

    where = tmp_path_factory.mktemp("toy-tokenizer")
    save_tokenizer(build_tokenizer(), where)
    return AutoTokenizer.from_pretrained(where)


@pytest.fixture(scope="session")
def tiny(toy_tokenizer):
    """2 layers, 4 heads, d_model 32, random weights and biases, the toy tokenizer."""
    from lib.core.model import random_gpt2

    return random_gpt2(
        toy_tokenizer,
        seed=3,
        name="tiny",
        random_biases=True,
        n_layer=2,
        n_head=4,
        n_embd=32,
        n_inner=64,
        n_positions=64,
        initializer_range=0.3,
    )


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """The real GPT-2 tokenizer; CI sets GPT2_TOKENIZER_DIR (the skip names why when it is absent)."""
    where = os.environ.get("GPT2_TOKENIZER_DIR")
    if not where or not Path(where).is_dir():
        pytest.skip("GPT2_TOKENIZER_DIR is not set to a directory: real-tokenizer checks need it")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(where)


def run_script(script: str, *args: str, env: dict | None = None, timeout: int = 600):
    """Run a numbered script as a user would; returns the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def run_app(app, *args: str):
    """Run a typer app under the project's error policy (lib.io.cli.main) in this process; returns returncode,
    stdout, stderr like subprocess.run."""
    import contextlib
    import io
    import subprocess

    from lib.io import cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(app, list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def run_cli(script: str, *args: str):
    """Run a numbered script's CLI in this process (same entry point as the command line, minus the
    interpreter start-up); returns returncode, stdout, stderr like subprocess.run."""
    from lib.io import cli

    return run_app(cli.load_script(script).app, *args)


def completed_run(out, script: str, *args: str):
    """Run a script into out (its only run there) and return the finished run's directory; fails with its stderr."""
    r = run_cli(script, *args, "--out", str(out))
    assert r.returncode == 0, r.stderr
    (run,) = (out / script.removesuffix(".py")).iterdir()
    return run


def refused(r, message: str) -> None:
    """A run refused as the error policy says: exit 2, one `error:` line naming message, no traceback."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in r.stderr
