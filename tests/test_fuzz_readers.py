"""Every file reader fed generated and mutated inputs (hypothesis): a valid load or one UserError (the one
`error:` line the scripts print), never another exception (a traceback). Readers: task files in each format,
dictionary folders (cfg.json fields, tensor names, shapes, dtypes), circuit-tracer CLT folders and config.yaml
sets (per-layer safetensors, GemmaScope npz), circuit JSON
(22, 24), grid TOML. Cases the fuzzing found are kept as plain tests at the end."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from lib.core.errors import UserError
from lib.io.argv import one_line

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "tasks" / "examples"
TOY_SETS = ROOT / "models" / "toy" / "dictionaries"
EXAMPLES_PER_READER = int(os.environ.get("FUZZ_EXAMPLES", "40"))  # FUZZ_EXAMPLES=2000 for a deeper search
FUZZ = settings(
    max_examples=EXAMPLES_PER_READER, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), TEXT)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)


Loaded = TypeVar("Loaded")


def refused_in_one_line(fn: Callable[[], Loaded]) -> Loaded | None:
    """fn()'s value, or None when it refused with one UserError line; any other exception fails the test."""
    try:
        return fn()
    except UserError as e:
        printed = one_line(str(e))  # as the scripts print it after `error: `
        assert len(printed.splitlines()) == 1, f"a refusal must print as one line: {printed!r}"
        return None


def mutate(data: bytes, draw) -> bytes:
    """A few byte edits: cut, delete, duplicate or replace a span, or insert bytes."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            out += draw(st.binary(min_size=1, max_size=8))
            continue
        i = draw(st.integers(0, len(out) - 1))
        j = draw(st.integers(i, min(len(out), i + 16)))
        kind = draw(st.sampled_from(["cut", "delete", "duplicate", "replace", "insert"]))
        if kind == "cut":
            del out[i:]
        elif kind == "delete":
            del out[i:j]
        elif kind == "duplicate":
            out[i:i] = out[i:j]
        elif kind == "replace":
            out[i:j] = draw(st.binary(max_size=8))
        else:
            out[i:i] = draw(st.sampled_from([b",", b'"', b"\n", b"|", b"{", b"}", b"\xff", b"\x00", b" ", b"[", b"]"]))
    return bytes(out)


# ---- task files ---------------------------------------------------------------------------------------------


def _load_task(path: Path, tokenizer):
    from tasks import TASKS, files

    files.reset()
    try:
        name = files.register(str(path))
        return TASKS[name].build(tokenizer, 8, 0)
    finally:
        files.reset()


TASK_COLUMNS = ["clean", "corrupted", "correct", "wrong", "group", "label", "correct_idx", "incorrect_idx", "prompt"]


@FUZZ
@given(data=st.data())
def test_any_csv_task_file_loads_or_is_refused_in_one_line(tmp_path, toy_tokenizer, data):
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example
    import csv

    columns = data.draw(st.lists(st.sampled_from(TASK_COLUMNS), min_size=1, max_size=6, unique=True))
    rows = data.draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    c: st.one_of(TEXT, st.sampled_from([" Mary", " John", "1|2", "[3, 4]", "42", "", "When Mary"]))
                    for c in columns
                }
            ),
            max_size=12,
        )
    )
    path = tmp_path / "fuzz_task.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(rows)
    refused_in_one_line(lambda: _load_task(path, toy_tokenizer))


@FUZZ
@given(data=st.data())
def test_any_jsonl_task_file_loads_or_is_refused_in_one_line(tmp_path, toy_tokenizer, data):
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example
    value = st.one_of(JSON, st.sampled_from([" Mary", [" Mary"], [" John", " Anne"], 3, [5, 6], "When Mary and John"]))
    mib_ioi = st.fixed_dictionaries(
        {
            "prompt": value,
            "metadata": st.one_of(
                st.fixed_dictionaries({}, optional={"indirect_object": value, "subject": value}), JSON
            ),
            "s2_io_flip_counterfactual": st.one_of(st.fixed_dictionaries({}, optional={"prompt": value}), JSON),
        }
    )
    mib_mcqa = st.fixed_dictionaries(
        {
            "prompt": value,
            "choices": st.one_of(st.fixed_dictionaries({"label": st.lists(value, max_size=4)}), JSON),
            "answerKey": st.one_of(st.integers(-2, 5), JSON),
            "symbol_counterfactual": st.one_of(st.fixed_dictionaries({}, optional={"prompt": value}), JSON),
        }
    )
    mib_arithmetic = st.fixed_dictionaries(
        {"prompt": value, "label": value, "random_counterfactual": JSON}, optional={"operator": value}
    )
    row = st.one_of(
        st.dictionaries(st.sampled_from(TASK_COLUMNS), value, max_size=6), mib_ioi, mib_mcqa, mib_arithmetic, JSON
    )
    rows = data.draw(st.lists(row, max_size=10))
    path = tmp_path / "fuzz_task.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    refused_in_one_line(lambda: _load_task(path, toy_tokenizer))


@FUZZ
@given(data=st.data())
def test_any_mutation_of_a_shipped_example_loads_or_is_refused_in_one_line(tmp_path, toy_tokenizer, data):
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example
    example = data.draw(st.sampled_from(sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".csv", ".jsonl"))))
    path = tmp_path / f"mutated{example.suffix}"
    path.write_bytes(mutate(example.read_bytes()[:4000], data.draw))
    refused_in_one_line(lambda: _load_task(path, toy_tokenizer))


def _toy_set_copy(tmp_path: Path, name: str) -> Path:
    """A fresh copy of one shipped dictionary folder (its own directory: hypothesis reuses tmp_path)."""
    folder = Path(tempfile.mkdtemp(dir=tmp_path)) / name
    shutil.copytree(TOY_SETS / name, folder)
    return folder


# ---- dictionary folders ----------------------------------------------------------------------------------------

CFG_FIELDS = ["architecture", "d_in", "d_out", "d_sae", "dtype", "hook_name", "k", "apply_b_dec_to_input", "metadata"]
TENSOR_NAMES = ["W_enc", "W_dec", "b_enc", "b_dec", "threshold", "W_skip", "extra"]


@FUZZ
@given(data=st.data())
def test_any_dictionary_folder_loads_or_is_refused_in_one_line(tmp_path, data):
    from lib.features import files

    folder = _toy_set_copy(tmp_path, "mlp1")
    cfg = json.loads((folder / "cfg.json").read_text())
    for key in data.draw(st.lists(st.sampled_from(CFG_FIELDS), max_size=3, unique=True)):
        if data.draw(st.booleans()):
            cfg.pop(key, None)
        else:
            cfg[key] = data.draw(
                st.one_of(JSON, st.sampled_from(["topk", "jumprelu", "relu", "standard", "float16", "bf16", 0, -1, 64]))
            )
    (folder / "cfg.json").write_text(json.dumps(cfg))
    if data.draw(st.booleans()):  # the tensors too: names, shapes, dtypes
        tensors = {}
        for name in data.draw(st.lists(st.sampled_from(TENSOR_NAMES), max_size=6, unique=True)):
            shape = data.draw(st.lists(st.sampled_from([0, 1, 8, 64, 256]), max_size=3))
            dtype = data.draw(st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool, torch.float64]))
            tensors[name] = torch.zeros(shape, dtype=dtype)
        save_file(tensors, str(folder / "sae_weights.safetensors"))
    loaded = refused_in_one_line(lambda: files.read(folder))
    if loaded is not None:  # a loaded dictionary encodes and decodes without error
        x = torch.randn(2, loaded.d_in)
        loaded.decode(loaded.encode(x))


@FUZZ
@given(data=st.data())
def test_any_mutated_safetensors_or_config_bytes_are_refused_in_one_line(tmp_path, data):
    from lib.features import files

    folder = _toy_set_copy(tmp_path, "attn0")
    name = data.draw(st.sampled_from(["cfg.json", "sae_weights.safetensors"]))
    raw = (folder / name).read_bytes()
    (folder / name).write_bytes(
        mutate(raw[:2000], data.draw) if name.endswith("json") else mutate(raw[:400], data.draw)
    )
    refused_in_one_line(lambda: files.read(folder))


@settings(
    max_examples=max(EXAMPLES_PER_READER // 2, 10),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_clt_folder_loads_or_is_refused_in_one_line(tmp_path, data):
    from lib.features.transcoders import read_clt

    folder = _toy_set_copy(tmp_path, "clt")
    target = data.draw(st.sampled_from(sorted(p.name for p in folder.iterdir())))
    if target == "cfg.json" and data.draw(st.booleans()):
        cfg = json.loads((folder / target).read_text())
        key = data.draw(st.sampled_from(sorted(cfg) + ["extra"]))
        cfg[key] = data.draw(JSON)
        (folder / target).write_text(json.dumps(cfg))
    elif data.draw(st.booleans()):
        (folder / target).unlink()
    else:
        (folder / target).write_bytes(mutate((folder / target).read_bytes()[:600], data.draw))
    refused_in_one_line(lambda: read_clt(folder))


@settings(
    max_examples=max(EXAMPLES_PER_READER // 2, 10),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_circuit_tracer_set_loads_or_is_refused_in_one_line(tmp_path, data):
    """circuit-tracer's config.yaml sets (per-layer safetensors with W_skip and thresholds, GemmaScope npz):
    config fields replaced by any YAML value, files removed, or bytes mutated."""
    import yaml
    from test_published_transcoders import write_set

    from lib.features.files import read_set

    folder = Path(tempfile.mkdtemp(dir=tmp_path)) / "set"
    write_set(folder, data.draw(st.sampled_from(["skip", "gemmascope"])), 2, 8, torch.Generator().manual_seed(0))
    target = data.draw(st.sampled_from(sorted(p.name for p in folder.iterdir())))
    if target == "config.yaml" and data.draw(st.booleans()):
        cfg = yaml.safe_load((folder / target).read_text())
        key = data.draw(st.sampled_from(sorted(cfg) + ["extra"]))
        cfg[key] = data.draw(JSON)
        (folder / target).write_text(yaml.safe_dump(cfg))
    elif data.draw(st.booleans()):
        (folder / target).unlink()
    else:
        (folder / target).write_bytes(mutate((folder / target).read_bytes()[:600], data.draw))
    refused_in_one_line(lambda: read_set(folder))


# ---- circuit JSON (22, 24) ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_graph():
    from lib.core.graph import Graph

    return Graph(2, 2)


@FUZZ
@given(data=st.data())
def test_any_circuit_json_loads_or_is_refused_in_one_line(tmp_path, small_graph, data):
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example
    from lib.io.circuit_json import Circuit

    edge = st.sampled_from(small_graph.edge_names)
    score = st.one_of(st.floats(allow_nan=True), TEXT, st.none(), st.booleans())
    ours = st.fixed_dictionaries(
        {"edges": st.one_of(st.dictionaries(st.one_of(edge, TEXT), score, max_size=6), JSON)},
        optional={"model": JSON, "task": JSON, "method": JSON, "params": JSON, "format": JSON},
    )
    eap_ig = st.fixed_dictionaries(
        {
            "edges": st.dictionaries(
                st.one_of(st.sampled_from(["input->a0.h0<q>", "a0.h1->logits", "m0->a1.h0<v>"]), TEXT),
                st.fixed_dictionaries({}, optional={"score": score, "in_graph": SCALAR}),
                max_size=4,
            )
        },
        optional={"nodes": JSON, "cfg": JSON},
    )
    obj = data.draw(st.one_of(ours, eap_ig, JSON))
    path = tmp_path / "circuit.json"
    path.write_text(json.dumps(obj))
    refused_in_one_line(lambda: Circuit.load(path, small_graph))


@FUZZ
@given(data=st.data())
def test_any_mutation_of_a_saved_circuit_loads_or_is_refused_in_one_line(tmp_path, small_graph, data):
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example
    from lib.io.circuit_json import Circuit

    edges = data.draw(st.lists(st.sampled_from(small_graph.edge_names), min_size=1, max_size=8, unique=True))
    path = tmp_path / "circuit.json"
    Circuit("toy", "ioi", "test", {}, {e: 1.0 for e in edges}).save(path, small_graph)
    path.write_bytes(mutate(path.read_bytes(), data.draw))
    refused_in_one_line(lambda: Circuit.load(path, small_graph))


# ---- grid TOML -----------------------------------------------------------------------------------------------------

TOML_VALUE = st.one_of(
    st.integers(-5, 100),
    st.sampled_from(['"toy"', '"ioi"', '"02_logit_diff.py"', '"06_acdc.py"', '"nope.py"', "true", "1.5", '""']),
    st.lists(st.sampled_from(['"ioi"', '"sva"', "0", "1", '"resample"', '"all"']), max_size=3).map(
        lambda v: "[" + ", ".join(v) + "]"
    ),
)
TOML_KEY = st.sampled_from(["script", "tasks", "seed", "model", "n-prompts", "ablation", "device", "bogus", "top-k"])


@FUZZ
@given(data=st.data())
def test_any_grid_file_loads_or_is_refused_in_one_line(tmp_path, data):
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example
    from lib.batch import grid

    lines = []
    for table in data.draw(st.lists(st.sampled_from(["[defaults]", "[[experiment]]", "[other]"]), max_size=4)):
        lines.append(table)
        for key, value in data.draw(st.lists(st.tuples(TOML_KEY, TOML_VALUE), max_size=5)):
            lines.append(f"{key} = {value}")
    path = tmp_path / "grid.toml"
    path.write_text("\n".join(lines) + "\n")
    refused_in_one_line(lambda: grid.check(grid.load(path)[1], str(path)))


@FUZZ
@given(data=st.data())
def test_any_mutation_of_the_smoke_grid_loads_or_is_refused_in_one_line(tmp_path, data):
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example
    from lib.batch import grid

    path = tmp_path / "grid.toml"
    path.write_bytes(mutate((ROOT / "grids" / "smoke.toml").read_bytes(), data.draw))
    refused_in_one_line(lambda: grid.check(grid.load(path)[1], str(path)))


# ---- what the fuzzing found, as plain tests ---------------------------------------------------------------------


def _refusal(fn) -> str:
    with pytest.raises(UserError) as e:
        fn()
    return str(e.value)


def test_a_dictionary_of_scalar_tensors_is_refused(tmp_path):
    from lib.features import files

    folder = _toy_set_copy(tmp_path, "mlp1")
    save_file(
        {n: torch.zeros(()) for n in ("W_enc", "W_dec", "b_enc", "b_dec")}, str(folder / "sae_weights.safetensors")
    )
    assert "must be non-empty matrices" in _refusal(lambda: files.read(folder))  # was an IndexError


def test_a_dictionary_of_integer_tensors_is_refused(tmp_path):
    from lib.features import files

    folder = _toy_set_copy(tmp_path, "mlp1")
    tensors = {"W_enc": (64, 256), "W_dec": (256, 64), "b_enc": (256,), "b_dec": (64,)}
    save_file(
        {n: torch.zeros(s, dtype=torch.int64) for n, s in tensors.items()}, str(folder / "sae_weights.safetensors")
    )
    assert "not floating-point" in _refusal(lambda: files.read(folder))


@pytest.mark.parametrize("metadata", [1, "toy", [1]])
def test_a_dictionary_config_whose_metadata_is_not_an_object_is_refused(tmp_path, metadata):
    from lib.features import files

    folder = _toy_set_copy(tmp_path, "mlp1")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "metadata": metadata}))
    assert "metadata is not a JSON object" in _refusal(lambda: files.read(folder))  # was a TypeError


def test_a_boolean_k_is_not_an_integer(tmp_path):
    from lib.features import files

    folder = _toy_set_copy(tmp_path, "mlp1")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "k": True}))
    assert "integer k" in _refusal(lambda: files.read(folder))  # True was read as k = 1


def test_a_clt_folder_without_its_first_encoder_is_refused(tmp_path):
    from lib.features.transcoders import read_clt

    folder = _toy_set_copy(tmp_path, "clt")
    (folder / "W_enc_0.safetensors").unlink()
    assert "no W_enc_0.safetensors" in _refusal(lambda: read_clt(folder))  # was torch.stack of nothing


def test_a_clt_tensor_of_the_wrong_rank_is_refused(tmp_path):
    from safetensors.torch import load_file

    from lib.features.transcoders import read_clt

    folder = _toy_set_copy(tmp_path, "clt")
    tensors = load_file(str(folder / "W_enc_1.safetensors"))
    save_file({**tensors, "b_dec_1": torch.zeros(2, 2)}, str(folder / "W_enc_1.safetensors"))
    assert "b_dec_1 is torch.float32 of shape (2, 2)" in _refusal(lambda: read_clt(folder))


def test_a_clt_config_with_a_hook_that_is_not_a_template_is_refused(tmp_path):
    from lib.features.transcoders import read_clt

    folder = _toy_set_copy(tmp_path, "clt")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "hook_name": 3}))
    assert "hook names with {layer}" in _refusal(lambda: read_clt(folder))
    (folder / "cfg.json").write_text(json.dumps([cfg]))
    assert "not a JSON object" in _refusal(lambda: read_clt(folder))


def test_mib_rows_missing_the_fields_mibs_loader_reads_are_dropped_and_counted(tmp_path, toy_tokenizer):
    good = {
        "prompt": "When Mary and John went to the store, John gave a drink to",
        "metadata": {"indirect_object": "Mary", "subject": "John"},
        "s2_io_flip_counterfactual": {"prompt": "When Mary and John went to the store, Mary gave a drink to"},
    }
    broken = {**good, "metadata": {}}  # was a KeyError from inside the reader
    path = tmp_path / "mib_ioi.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [broken] + [good] * 5))
    from tasks import file_task, files

    files.reset()
    try:
        name = files.register(str(path))
        source = files.SOURCES[name]
        item, why = file_task._item(source, broken, toy_tokenizer, None)
        assert item is None and why == "a MIB row without the fields MIB's loader reads"
    finally:
        files.reset()
