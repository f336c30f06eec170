"""Transcoder sets in circuit-tracer's published formats (lib.features.published), written here by hand with
safetensors / numpy in each format's own layout on tiny random Gemma 2, Llama 3.2 and Qwen3 models: each loads,
splices with error nodes to the model's logits, and gives an attribution graph whose every checked column is
exactly what removing that source changes in an independent frozen forward pass (skip connections live).
A set reading the raw residual stream gets its features from the unprocessed model, as on the plain Hugging
Face model; the processed model's differ."""

import numpy as np
import pytest
import torch
from conftest import run_app, run_cli
from safetensors.torch import save_file
from test_architectures import tiny_configs, twins

from lib.core.errors import UserError
from lib.core.model import UNPROCESSED, from_hf

D_SAE = 24


def random_layer(d_in: int, d_out: int, gen, skip: bool, jump: bool) -> dict:
    """One layer's tensors in circuit-tracer's orientation (W_enc [d_sae, d_in]), features that do fire."""
    t = {
        "W_enc": torch.randn(D_SAE, d_in, generator=gen) / d_in**0.5,
        "W_dec": torch.randn(D_SAE, d_out, generator=gen) * 0.3,
        "b_enc": torch.rand(D_SAE, generator=gen) * 0.2,
        "b_dec": torch.randn(d_out, generator=gen) * 0.1,
    }
    if jump:
        t["activation_function.threshold"] = torch.rand(D_SAE, generator=gen) * 0.3
    if skip:
        t["W_skip"] = torch.randn(d_out, d_in, generator=gen) * 0.1  # output += x @ W_skip.T
    return t


def write_yaml(folder, kind: str, hook_in: str, hook_out: str, files: list | None) -> None:
    lines = [f"model_kind: {kind}", f"feature_input_hook: {hook_in}", f"feature_output_hook: {hook_out}", "scan: test"]
    if files is not None:
        lines.append("transcoders:")
        lines += [f"  - {f}" for f in files]
    (folder / "config.yaml").write_text("\n".join(lines) + "\n")


def write_set(folder, fmt: str, L: int, d: int, gen) -> None:
    folder.mkdir(parents=True)
    if fmt == "gemmascope":  # GemmaScope's npz: W_enc [d_in, d_sae], `threshold`
        files = []
        for l in range(L):
            t = random_layer(d, d, gen, skip=False, jump=True)
            np.savez(
                folder / f"params_{l}.npz",
                W_enc=t["W_enc"].T.numpy(),
                W_dec=t["W_dec"].numpy(),
                b_enc=t["b_enc"].numpy(),
                b_dec=t["b_dec"].numpy(),
                threshold=t["activation_function.threshold"].numpy(),
            )
            files.append(f"params_{l}.npz")
        write_yaml(folder, "transcoder_set", "ln2.hook_normalized", "hook_mlp_out", files)
    elif fmt == "skip":  # per-layer safetensors with W_skip and JumpReLU, read at the MLP's own hooks
        for l in range(L):
            save_file(random_layer(d, d, gen, skip=True, jump=True), str(folder / f"layer_{l}.safetensors"))
        write_yaml(
            folder, "transcoder_set", "mlp.hook_in", "mlp.hook_out", [f"layer_{l}.safetensors" for l in range(L)]
        )
    elif fmt == "clt":  # circuit-tracer's CLT layout with JumpReLU, reading the raw residual stream
        for l in range(L):
            t = random_layer(d, d, gen, skip=False, jump=True)
            enc = {f"W_enc_{l}": t["W_enc"], f"b_enc_{l}": t["b_enc"], f"b_dec_{l}": t["b_dec"]}
            enc[f"threshold_{l}"] = t["activation_function.threshold"]
            save_file(enc, str(folder / f"W_enc_{l}.safetensors"))
            save_file(
                {f"W_dec_{l}": torch.randn(D_SAE, L - l, d, generator=gen) * 0.2},
                str(folder / f"W_dec_{l}.safetensors"),
            )
        write_yaml(folder, "cross_layer_transcoder", "hook_resid_mid", "hook_mlp_out", None)


CASES = {"gemma2": "gemmascope", "llama3.2": "skip", "qwen3": "clt"}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, toy_tokenizer, tmp_path_factory):
    from lib.features import files, transcoders
    from tasks import TASKS

    arch = request.param
    _, hf = twins(*tiny_configs(len(toy_tokenizer))[arch])
    model = from_hf(hf, toy_tokenizer, arch, processing=UNPROCESSED)
    folder = tmp_path_factory.mktemp(arch) / "set"
    write_set(folder, CASES[arch], model.n_layers, model.d_model, torch.Generator().manual_seed(3))
    raw = files.read_set(folder)
    assert files.processing_of(raw, str(folder)) == UNPROCESSED
    tc = next(iter(files.fit(raw, model).values()))
    assert isinstance(tc, transcoders.TranscoderSet)
    data = TASKS["ioi"].build(toy_tokenizer, 2, 0)
    return arch, model, tc, data.clean[0, : int(data.lengths[0])]


def test_the_format_reads_as_written(case):
    arch, _, tc, _ = case
    assert tc.architecture == "jumprelu" and tc.cfg["activations"] == "unprocessed"
    assert (tc.W_skip is not None) == (CASES[arch] == "skip") and tc.kind == ("clt" if arch == "qwen3" else "plt")
    assert tc.hooks_in[1] == {"gemma2": "blocks.1.ln2.hook_normalized", "llama3.2": "blocks.1.mlp.hook_in"}.get(
        arch, "blocks.1.hook_resid_mid"
    )


def frozen_run(model, tc, tokens, mlp_const, embed, clean_inputs):
    """Targets of the frozen replacement model without autograd: patterns and norm scales at the clean prompt's,
    token embeddings and MLP outputs set, a skip connection recomputed from this pass's input."""
    from lib.features.replacement import freeze_hooks, frozen_values, norms_through_hooks

    cache = {}

    def keep(name):
        return lambda x, hook: cache.__setitem__(name, x)

    def mlp(l):
        def hook(x, hook):
            out = mlp_const[l][None]
            if tc.W_skip is not None:
                out = out + tc.skip(l, cache[tc.hooks_in[l]]) - tc.skip(l, clean_inputs[l][None])
            return out.to(x.dtype)

        return hook

    hooks = freeze_hooks(model, frozen_values(model, tokens[None])) + [("hook_embed", lambda x, hook: embed[None])]
    hooks += [(h, keep(h)) for h in tc.hooks_in] + [(tc.hooks_out[l], mlp(l)) for l in range(tc.n_layers)]
    hooks += [("unembed.hook_in", keep("final"))]
    with norms_through_hooks(model), torch.no_grad():
        model.bridge.run_with_hooks(tokens[None], fwd_hooks=hooks)
    pre = torch.stack([tc.pre(l, cache[tc.hooks_in[l]][0]) for l in range(tc.n_layers)])
    return pre, cache["final"][0, -1] @ model.bridge.W_U + model.bridge.b_U


def test_splice_and_attribution_graph_are_exact(case):
    from lib.core.forward import logits_at
    from lib.features.attribution import attribute, clean_state
    from lib.features.replacement import replacement_hooks

    arch, model, tc, tokens = case
    pos = torch.tensor([len(tokens) - 1])
    with_errors = logits_at(model, tokens[None], pos, hooks=replacement_hooks(tc, range(tc.n_layers), errors="live"))
    torch.testing.assert_close(with_errors, logits_at(model, tokens[None], pos), atol=1e-5, rtol=1e-5)
    graph = attribute(model, tc, tokens, batch_size=32, desired_logit_prob=0.99)
    state = clean_state(model, tc, tokens)
    mlp, embed, inputs = state["mlp_out"], state["embed"], state["inputs"]
    sel = graph.active[graph.selected]

    def targets(mlp_const, emb):
        pre, logits = frozen_run(model, tc, tokens, mlp_const, emb, inputs)
        out = torch.zeros(graph.adjacency.shape[0], dtype=torch.float64)
        out[: graph.n_features] = pre[sel[:, 0], sel[:, 1], sel[:, 2]].double()
        out[-graph.n_logits :] = (logits[graph.logit_tokens] - logits.mean()).double()
        return out

    base = targets(mlp, embed)
    torch.testing.assert_close(base, graph.targets, atol=1e-4, rtol=1e-4)  # the frozen pass is the model's pass
    s, P = graph.slices(), graph.n_pos
    checked = 0
    for j in range(graph.n_features):  # a feature of the first layer with effects: removed from every layer it writes
        layer, p, feat = graph.active[graph.selected[j]].tolist()
        if layer != 0 or graph.adjacency[:, j].abs().max() < 1e-3:
            continue
        removed = [m.clone() for m in mlp]
        for o in range(tc.n_out(layer)):
            removed[layer + o][p] -= graph.activations[graph.selected[j]] * tc.W_dec[layer][feat, o]
        torch.testing.assert_close(base - targets(removed, embed), graph.adjacency[:, j].double(), atol=1e-4, rtol=0)
        checked += 1
        break
    removed = [m.clone() for m in mlp]
    removed[0][P - 1] -= state["errors"][0][P - 1]
    column = s["error"].start + P - 1
    torch.testing.assert_close(base - targets(removed, embed), graph.adjacency[:, column].double(), atol=1e-4, rtol=0)
    removed_embed = embed.clone()
    removed_embed[2] = 0
    column = s["token"].start + 2
    torch.testing.assert_close(
        base - targets(mlp, removed_embed), graph.adjacency[:, column].double(), atol=1e-4, rtol=0
    )
    assert checked == 1 and graph.adjacency[:, column].abs().max() > 1e-4


def test_a_set_on_the_raw_residual_stream_reads_the_unprocessed_model(toy_tokenizer, tmp_path):
    """A CLT reading hook_resid_mid of the (LayerNorm) toy model: its features on the unprocessed model equal
    those on the plain Hugging Face model's residual stream; the processed model (writing weights centred) gives
    others, which is why the set's format decides how the model is loaded."""
    from transformers import GPT2LMHeadModel

    from lib.core.model import PROCESSED, TOY_DIR, load_model
    from lib.features import files

    folder = tmp_path / "clt"
    L, d = 4, 64
    write_set(folder, "clt", L, d, torch.Generator().manual_seed(1))
    tc = next(iter(files.read_set(folder).values()))
    tokens = torch.tensor([[toy_tokenizer.bos_token_id or 0, 40, 41, 42, 43]])
    hf = GPT2LMHeadModel.from_pretrained(TOY_DIR).eval()
    attn_out = {}
    for l in range(L):
        hf.get_submodule(f"transformer.h.{l}.attn").register_forward_hook(
            lambda m, i, o, l=l: attn_out.__setitem__(l, tuple(o)[0])
        )
    with torch.no_grad():
        hidden = hf(tokens, output_hidden_states=True).hidden_states
    from lib.core.forward import capture

    features = {}
    for name, processing in (("unprocessed", UNPROCESSED), ("processed", PROCESSED)):
        model = load_model("toy", "cpu", processing=processing)
        x = capture(model, tokens, tc.hooks_in)
        features[name] = torch.stack([tc.encode(l, x[tc.hooks_in[l]][0]) for l in range(L)])
    reference = torch.stack([tc.encode(l, (hidden[l] + attn_out[l])[0]) for l in range(L)])
    assert (reference > 0).sum() > 10
    torch.testing.assert_close(features["unprocessed"], reference, atol=1e-4, rtol=1e-4)
    assert (features["processed"] - reference).abs().max() > 1e-2


def test_written_sets_are_circuit_tracers_layout_and_read_back(tmp_path):
    """published.write puts each layer in layer_{l}.safetensors with circuit-tracer's keys and orientation (read
    here with safetensors alone) and config.yaml; reading it back gives the same set; TopK is refused."""
    from safetensors.torch import load_file

    from lib.features import published

    src = tmp_path / "src"
    write_set(src, "skip", 2, 16, torch.Generator().manual_seed(0))
    tc = published.read(src)
    published.write(tmp_path / "out", tc, model_name="tiny")
    raw = load_file(str(tmp_path / "out" / "layer_1.safetensors"))
    assert set(raw) == {"W_enc", "W_dec", "b_enc", "b_dec", "W_skip", "activation_function.threshold"}
    assert raw["W_enc"].shape == (D_SAE, 16) and raw["W_skip"].shape == (16, 16)
    torch.testing.assert_close(raw["W_enc"], load_file(str(src / "layer_1.safetensors"))["W_enc"])
    again = published.read(tmp_path / "out")
    for name in ("W_enc", "W_dec", "b_enc", "threshold", "W_skip"):
        for a, b in zip(getattr(tc, name), getattr(again, name)):
            torch.testing.assert_close(a, b)
    assert again.hooks_out == ["blocks.0.mlp.hook_out", "blocks.1.mlp.hook_out"]
    tc.architecture, tc.k = "topk", 2
    with pytest.raises(UserError, match="TopK transcoder has no circuit-tracer encoding"):
        published.write(tmp_path / "topk", tc)


@pytest.mark.parametrize(
    "yaml_text,message",
    [
        ("model_kind: sparse_thing\nfeature_input_hook: a\nfeature_output_hook: b\n", "model_kind 'sparse_thing'"),
        ("model_kind: transcoder_set\nfeature_output_hook: b\n", "names no feature_input_hook"),
        ("model_kind: transcoder_set\nfeature_input_hook: a\nfeature_output_hook: b\ntranscoders: [x.npz]\n", "x.npz"),
        (": [\n", "not readable YAML"),
    ],
)
def test_bad_sets_are_one_line(tmp_path, yaml_text, message):
    from lib.features import files

    (tmp_path / "config.yaml").write_text(yaml_text)
    with pytest.raises(UserError, match=message) as e:
        files.read_set(tmp_path)
    assert "\n" not in str(e.value)


def test_a_set_of_another_width_or_hook_is_one_line(toy, tmp_path):
    from lib.features import files

    write_set(tmp_path / "s", "skip", 4, 16, torch.Generator().manual_seed(0))  # 16 wide, toy is 64
    with pytest.raises(UserError, match="the model has no hook blocks.0.mlp.hook_in|d_in is 16") as e:
        files.fit(files.read_set(tmp_path / "s"), toy)
    assert "\n" not in str(e.value)


def test_trainer_writes_circuit_tracers_layout_from_the_unprocessed_model(tmp_path):
    from lib.features import files
    from lib.tools import dictionaries as train

    args = ["--out", str(tmp_path / "ct"), "--steps", "20", "--n-per-task", "4", "--width", "32", "--quiet"]
    r = run_app(train.app, *args, "--layout", "circuit-tracer", "--activation", "relu")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "ct").iterdir()) == sorted(
        ["config.yaml", "report.csv", "set.json", *(f"layer_{l}.safetensors" for l in range(4))]
    )
    raw = files.read_set(tmp_path / "ct")
    tc = raw["ct"]
    assert tc.kind == "plt" and tc.architecture == "standard" and tc.hooks_in[2] == "blocks.2.ln2.hook_normalized"
    assert files.processing_of(raw, "ct") == UNPROCESSED
    r = run_app(train.app, "--out", str(tmp_path / "x"), "--layout", "circuit-tracer", "--quiet")
    assert r.returncode == 2 and "TopK has no circuit-tracer encoding" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_converter_round_trips_jumprelu_skip_sets_and_refuses_what_has_no_encoding(tmp_path):
    from safetensors.torch import load_file

    from lib.core.model import TOY_DIR
    from lib.features import files, published
    from lib.tools import transcoder_format as convert

    write_set(tmp_path / "ct", "skip", 4, 64, torch.Generator().manual_seed(2))
    assert run_app(convert.app, str(tmp_path / "ct"), str(tmp_path / "sl")).returncode == 0
    saelens = files.read_set(tmp_path / "sl")
    assert sorted(saelens) == [f"tc{l}" for l in range(4)]
    assert saelens["tc1"].cfg["architecture"] == "jumprelu_skip_transcoder"
    assert files.processing_of(saelens, "sl") == UNPROCESSED
    x = torch.randn(5, 64)
    original = published.read(tmp_path / "ct")
    torch.testing.assert_close(saelens["tc1"].encode(x), original.encode(1, x))
    torch.testing.assert_close(saelens["tc1"].skip(x), original.skip(1, x))
    assert run_app(convert.app, str(tmp_path / "sl"), str(tmp_path / "back")).returncode == 0
    for l in range(4):
        name = f"layer_{l}.safetensors"
        assert (tmp_path / "back" / name).read_bytes() == (tmp_path / "ct" / name).read_bytes()
    r = run_app(convert.app, str(TOY_DIR / "dictionaries"), str(tmp_path / "toy"))
    assert r.returncode == 2 and "trained on processed activations" in r.stderr and not (tmp_path / "toy").exists()
    r = run_app(convert.app, str(tmp_path / "ct"), str(tmp_path / "sl"))
    assert r.returncode == 2 and "exists" in r.stderr
    negative = load_file(str(tmp_path / "ct" / "layer_2.safetensors"))  # circuit-tracer keeps pre > -0.1 < 0
    negative["activation_function.threshold"] -= 1.0
    save_file(negative, str(tmp_path / "ct" / "layer_2.safetensors"))
    r = run_app(convert.app, str(tmp_path / "ct"), str(tmp_path / "neg"))
    assert r.returncode == 2 and "no exact SAELens encoding" in r.stderr and not (tmp_path / "neg").exists()


def test_a_set_reading_what_the_head_split_changes_is_one_line(toy_tokenizer, tmp_path):
    """Gemma 2: ln1_post's own scale and normalized value change meaning once the norm is split across heads."""
    from lib.features import files

    _, hf = twins(*tiny_configs(len(toy_tokenizer))["gemma2"])
    model = from_hf(hf, toy_tokenizer, "gemma2", processing=UNPROCESSED)
    write_set(tmp_path / "s", "gemmascope", 2, 32, torch.Generator().manual_seed(0))
    text = (tmp_path / "s" / "config.yaml").read_text().replace("ln2.hook_normalized", "ln1_post.hook_normalized")
    (tmp_path / "s" / "config.yaml").write_text(text)
    with pytest.raises(UserError, match="reads blocks.0.ln1_post.hook_normalized, which this suite's split") as e:
        files.fit(files.read_set(tmp_path / "s"), model)
    assert "\n" not in str(e.value)


def test_10_on_gemma_2_with_a_set_named_as_circuit_tracer_names_it(toy_tokenizer, tmp_path):
    """10 on a saved tiny Gemma 2 with `--transcoders <GemmaScope-format folder>` (circuit-tracer's
    transcoder_name, in place of --dictionaries): the kind is read from the set, the model loaded unprocessed, and
    run.json says what was frozen and that the soft-cap was left out of the logit targets. A value that is neither
    a kind nor a set is one line."""
    import json

    cls, cfg = tiny_configs(len(toy_tokenizer))["gemma2"]
    random_model_dir = tmp_path / "gemma2"
    twins(cls, cfg)[1].save_pretrained(random_model_dir)
    toy_tokenizer.save_pretrained(random_model_dir)
    write_set(tmp_path / "gemmascope", "gemmascope", 2, 32, torch.Generator().manual_seed(0))
    args = ["--model", str(random_model_dir), "--tasks", "ioi", "--n-prompts", "4", "--n-graphs", "1"]
    args += ["--n-bootstrap", "0", "--quiet", "--out", str(tmp_path / "out")]
    r = run_cli("10_attribution_graphs.py", *args, "--transcoders", str(tmp_path / "gemmascope"))
    assert r.returncode == 0, r.stderr
    record = json.loads(next((tmp_path / "out" / "10_attribution_graphs").iterdir()).joinpath("run.json").read_text())
    assert record["options"]["transcoders"] == "plt" and record["options"]["dictionaries"].endswith("gemmascope")
    assert record["model"]["processing"] == UNPROCESSED
    assert record["transcoder_sets"]["plt"]["format"] == "circuit-tracer transcoder_set"
    frozen = record["frozen_for_attribution"]
    assert "attn.hook_post_scale" in frozen["hooks"] and "ln2_post.hook_scale" in frozen["hooks"]
    assert frozen["final_logit_softcap_removed"] == 30.0
    r = run_cli("10_attribution_graphs.py", *args, "--transcoders", "pltt")
    assert r.returncode == 2 and "unknown --transcoders 'pltt'" in r.stderr and len(r.stderr.splitlines()) == 1


def test_saelens_and_circuit_tracer_jumprelu_agree_as_read(tmp_path):
    """SAELens's JumpReLU applies ReLU first, circuit-tracer's does not: a SAELens transcoder with thresholds below 0
    read as a per-layer set (10) gives SAELens's features, as the dictionary itself does."""
    from lib.features import files
    from lib.features.dictionary import Dictionary
    from lib.features.transcoders import from_dictionaries

    g = torch.Generator().manual_seed(4)
    cfg = {"architecture": "jumprelu_transcoder", "hook_name": "blocks.0.ln2.hook_normalized"}
    cfg["hook_name_out"] = "blocks.0.hook_mlp_out"
    threshold = torch.linspace(-0.5, 0.5, D_SAE)
    d = Dictionary(
        cfg,
        torch.randn(8, D_SAE, generator=g),
        torch.randn(D_SAE, 8, generator=g),
        torch.zeros(D_SAE),
        torch.zeros(8),
        threshold,
    )
    files.write(tmp_path / "tc0", d)
    read = files.read(tmp_path / "tc0")
    tc = from_dictionaries({"tc0": read}, 1, "t")
    x = torch.randn(50, 8, generator=g)
    features = read.encode(x)
    assert (features >= 0).all() and (x @ read.W_enc < 0).any()
    torch.testing.assert_close(tc.encode(0, x), features)
