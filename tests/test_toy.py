"""The shipped toy model performs every task (held-out prompts), loads offline, trains deterministically."""

import pytest
import torch

from lib.core.evaluate import behaviour
from lib.tools.toy import TOY_DIR, train
from tasks import TASK_NAMES, TASKS

N = 60
EVAL_SEED = 1  # training used seeds >= 10000


@pytest.fixture(scope="module")
def results(toy):
    return {name: behaviour(toy, TASKS[name].build(toy.tokenizer, N, EVAL_SEED)) for name in TASK_NAMES}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_accuracy_and_clean_corrupted_gap(results, name):
    b = results[name]
    clean, corrupt = b.metric_clean.mean(), b.metric_corrupted.mean()
    assert (b.metric_clean > 0).mean() >= 0.95
    if name == "ioi":
        assert clean >= 2.0 and corrupt <= 0.15 * clean
    elif name == "greater-than":
        assert clean >= 0.5 and corrupt < 0
    else:
        assert clean > 0 and corrupt <= 0.5 * clean


def test_shipped_files_small_and_hf_format():
    names = {p.name for p in TOY_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert sum(p.stat().st_size for p in TOY_DIR.iterdir()) < 5 * 2**20


def test_training_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    for run in ("a", "b"):
        train(tmp_path / run, steps=3, batch=4, n_per_task=40, seed=5)
    a, b = (load_file(tmp_path / r / "model.safetensors") for r in ("a", "b"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
