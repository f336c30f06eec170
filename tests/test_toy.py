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


def test_tokenizer_files_name_a_class_transformers_4_and_5_read(tmp_path):
    """transformers 5 writes `TokenizersBackend`, which 4 lacks (circuit-tracer and SAELens run on 4): the folder
    the trainer writes, and the shipped one, name PreTrainedTokenizerFast, and 5 still loads it the same."""
    import json

    from transformers import AutoTokenizer

    from lib.tools.toy import PORTABLE_TOKENIZER_CLASS, build_tokenizer, save_tokenizer

    save_tokenizer(build_tokenizer(), tmp_path)
    for folder in (tmp_path, TOY_DIR):
        config = json.loads((folder / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == PORTABLE_TOKENIZER_CLASS == "PreTrainedTokenizerFast"
        assert "backend" not in config
    assert (tmp_path / "tokenizer_config.json").read_bytes() == (TOY_DIR / "tokenizer_config.json").read_bytes()
    text = "Then, Mary and John went to the store. John gave a drink to"
    assert AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == build_tokenizer()(text)["input_ids"]


SHIPPED = {
    "toy-seed1": (1, None),
    "toy-rerun": (0, None),
    "toy-rerun@step1000": (0, 1000),
    "toy-rerun@step3000": (0, 3000),
}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_comparison_models_are_toy_runs_with_their_dictionaries(name):
    """toy-seed1 and toy-rerun are toy's recipe from seeds 1 and 0; toy-rerun@step<N> is toy-rerun's own run after N
    steps; each is small, in Hugging
    Face format, with a dictionary set trained on it (read and checked against its hooks without loading it)."""
    import json

    from lib.core.choices import shipped_model_dir
    from lib.features import files
    from lib.features.dictionary import Dictionary

    folder = shipped_model_dir(name)
    assert folder is not None and folder.is_dir()
    meta, toy_meta = (json.loads((f / "training.json").read_text()) for f in (folder, TOY_DIR))
    seed, step = SHIPPED[name]
    assert meta["seed"] == seed and meta.get("checkpoint_step") == step
    for key in ("steps", "batch_per_task", "n_per_task", "lr"):
        assert meta[key] == toy_meta[key], key  # one recipe
    assert sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) < 2 * 2**20
    dictionaries = files.read_set(folder / "dictionaries")
    assert {"tc0", "resid0", "mlp3"} <= set(dictionaries)
    assert all(d.cfg.get("model_name") == name for d in dictionaries.values() if isinstance(d, Dictionary))
