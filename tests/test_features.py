"""Sparse dictionaries (lib/features): SAELens's math against a direct numpy computation on a folder written by
hand in its layout, save/load bit for bit, splicing with error nodes leaves the model unchanged (one site and
all at once), a transcoder's reconstruction plus its error is the MLP's output, and bad dictionaries are one
line each."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from lib.core.errors import UserError
from lib.features import files
from lib.features.dictionary import Dictionary
from lib.features.splice import site, splice_hooks, spliced_logits

D_SAE = 96
D_SAE_TOY = 256  # the shipped toy set


def random_dictionary(hook: str, d_in: int, d_out: int, seed: int, architecture: str = "topk", out: str | None = None):
    g = torch.Generator().manual_seed(seed)
    cfg = {"architecture": architecture, "hook_name": hook, "model_name": "toy", "apply_b_dec_to_input": True}
    if architecture == "topk":
        cfg["k"] = 8
    if out:
        cfg["hook_name_out"] = out
    return Dictionary(
        cfg,
        torch.randn(d_in, D_SAE, generator=g) / 8,
        torch.randn(D_SAE, d_out, generator=g) / 8,
        torch.randn(D_SAE, generator=g) / 10,
        torch.randn(d_out, generator=g) / 10,
    )


@pytest.fixture(scope="module")
def toy_set(toy):
    d, out = toy.d_model, {}
    out["embed"] = random_dictionary("blocks.0.hook_resid_pre", d, d, 0, "standard")
    for layer in range(toy.n_layers):
        out[f"attn{layer}"] = random_dictionary(f"blocks.{layer}.hook_attn_out", d, d, 10 + layer)
        out[f"mlp{layer}"] = random_dictionary(f"blocks.{layer}.hook_mlp_out", d, d, 20 + layer, "standard")
        out[f"resid{layer}"] = random_dictionary(f"blocks.{layer}.hook_resid_post", d, d, 30 + layer)
    return out


def tokens_of(toy):
    from tasks import TASKS

    return TASKS["ioi"].build(toy.tokenizer, 4, 0).clean


def test_hand_written_saelens_folder_gives_numpys_activations(tmp_path):
    """A folder written with numpy and json alone, as SAELens lays it out (cfg fields under metadata, as v6)."""
    rng = np.random.default_rng(0)
    w_enc, w_dec = rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=(7, 5)).astype(np.float32)
    b_enc, b_dec = rng.normal(size=7).astype(np.float32), rng.normal(size=5).astype(np.float32)
    for name, arch in (("relu", "standard"), ("topk", "topk")):
        where = tmp_path / name
        where.mkdir()
        save_file(
            {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec}, str(where / "sae_weights.safetensors")
        )
        cfg = {
            "architecture": arch,
            "d_in": 5,
            "d_sae": 7,
            "dtype": "float32",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "metadata": {"hook_name": "blocks.0.hook_resid_post", "model_name": "toy"},
        }
        if arch == "topk":
            cfg["k"] = 3
        (where / "cfg.json").write_text(json.dumps(cfg))
    loaded = files.read_set(tmp_path)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    pre = (x - b_dec) @ w_enc + b_enc
    relu = np.maximum(pre, 0)
    topk = np.zeros_like(pre)
    for i, row in enumerate(pre):
        top = np.argsort(-row)[:3]
        topk[i, top] = np.maximum(row[top], 0)
    for name, expected in (("relu", relu), ("topk", topk)):
        d = loaded[name]
        got = d.encode(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            d.decode(torch.from_numpy(expected)).numpy(), expected @ w_dec + b_dec, rtol=1e-5, atol=1e-5
        )
        assert d.hook_name == "blocks.0.hook_resid_post" and d.kind == "sae"


def test_save_and_load_round_trip_bit_for_bit(tmp_path, toy_set):
    for name, d in list(toy_set.items())[:3]:
        files.write(tmp_path / name, d)
    back = files.read_set(tmp_path)
    for name, d in back.items():
        original = toy_set[name]
        assert all(torch.equal(getattr(d, n), getattr(original, n)) for n in files.TENSORS)
        assert d.architecture == original.architecture and d.k == original.k and d.hook_name == original.hook_name
        saved = json.loads((tmp_path / name / "cfg.json").read_text())
        assert saved["metadata"]["hook_name"] == d.hook_name and saved["d_sae"] == D_SAE


def test_splicing_with_error_nodes_leaves_the_model_unchanged(toy, toy_set):
    tokens = tokens_of(toy)
    with torch.no_grad():
        reference = toy.bridge(tokens)
    for name, d in toy_set.items():
        assert site(d) == name
        torch.testing.assert_close(spliced_logits(toy, tokens, {name: d}), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(spliced_logits(toy, tokens, toy_set), reference, atol=1e-4, rtol=1e-4)
    # without error nodes the replacement model is another model (here random dictionaries: far from it)
    assert (spliced_logits(toy, tokens, toy_set, with_error=False) - reference).abs().max() > 1.0


def test_decomposition_is_reconstruction_plus_error(toy, toy_set):
    from lib.core.forward import capture

    store, tokens = {}, tokens_of(toy)
    captured = capture(toy, tokens, [d.hook_name for d in toy_set.values()])
    with torch.no_grad():
        toy.bridge.run_with_hooks(tokens, fwd_hooks=splice_hooks(toy_set, store=store))
    for name, d in toy_set.items():
        x, parts = captured[d.hook_name], store[name]
        # the spliced pass sees the model's own activations (upstream sites add rounding only)
        torch.testing.assert_close(parts["features"], d.encode(x), atol=1e-4, rtol=1e-4)
        seen = d.decode(parts["features"]) + parts["error"]  # what the site passed on
        torch.testing.assert_close(seen, x, atol=1e-5, rtol=1e-5)
        if name == "embed":  # the first site reads the model's own activation: equal to float rounding
            assert (seen - x).abs().max() <= 2 * torch.finfo(x.dtype).eps * x.abs().max()
        assert (parts["features"] > 0).sum(-1).max() <= (d.k or D_SAE)


def test_transcoder_reconstruction_plus_error_is_the_mlp_output(toy):
    d = random_dictionary("blocks.1.ln2.hook_normalized", toy.d_model, toy.d_model, 5, out="blocks.1.hook_mlp_out")
    assert d.kind == "transcoder" and site(d) == "tc1"
    from lib.core.forward import capture

    store, tokens = {}, tokens_of(toy)
    captured = capture(toy, tokens, [d.hook_name, d.hook_name_out])
    with torch.no_grad():
        reference = toy.bridge(tokens)
        spliced = toy.bridge.run_with_hooks(tokens, fwd_hooks=splice_hooks({"tc1": d}, store=store))
    reconstruction = d.decode(d.encode(captured[d.hook_name]))  # read at the MLP's input, written at its output
    torch.testing.assert_close(reconstruction + store["tc1"]["error"], captured[d.hook_name_out], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(spliced, reference, atol=1e-5, rtol=1e-5)


def test_bad_dictionaries_are_one_line(tmp_path, toy):
    other = random_dictionary("blocks.7.hook_resid_post", toy.d_model, toy.d_model, 1)
    with pytest.raises(UserError, match="dictionary r7: the model has no hook blocks.7.hook_resid_post"):
        files.check_against({"r7": other}, toy)
    wide = random_dictionary("blocks.0.hook_resid_post", 768, 768, 1)
    with pytest.raises(UserError, match="dictionary gpt2: d_in is 768, but blocks.0.hook_resid_post is 64 wide"):
        files.check_against({"gpt2": wide}, toy)
    named = random_dictionary("blocks.0.hook_resid_post", toy.d_model, toy.d_model, 1)
    named.cfg["model_name"] = "gpt2"
    with pytest.raises(UserError, match="dictionary n was trained on 'gpt2', not 'toy'"):
        files.check_against({"n": named}, toy)
    files.write(tmp_path / "broken", named)
    (tmp_path / "broken" / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="is not a readable safetensors file"):
        files.read(tmp_path / "broken")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="no dictionary folders"):
        files.read_set(tmp_path / "nothing")
    files.write(tmp_path / "k", random_dictionary("blocks.0.hook_resid_post", 64, 64, 2))
    cfg = json.loads((tmp_path / "k" / "cfg.json").read_text())
    (tmp_path / "k" / "cfg.json").write_text(json.dumps({**cfg, "k": 0}))
    with pytest.raises(UserError, match="a topk dictionary needs an integer k in 1..d_sae"):
        files.read(tmp_path / "k")


@pytest.mark.parametrize("script", ["09_feature_circuits.py", "10_attribution_graphs.py"])
def test_a_set_folder_without_cfg_is_named_not_skipped(tmp_path, script):
    """A copy of the shipped set with mlp1/cfg.json deleted: refused in one line naming mlp1 (it was dropped
    silently, and 09 ran on the rest)."""
    import shutil

    from conftest import refused, run_cli

    from lib.core.model import TOY_DIR

    copy = tmp_path / "set"
    shutil.copytree(TOY_DIR / "dictionaries", copy)
    (copy / "mlp1" / "cfg.json").unlink()
    r = run_cli(script, "--tasks", "ioi", "--model", "toy", "--dictionaries", str(copy), "--out", str(tmp_path / "o"))
    refused(r, f"dictionaries {copy}: folder mlp1 holds no cfg.json")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.csv"))


def test_training_is_deterministic_and_refuses_bad_options(tmp_path):
    """The same command, twice: bit-identical weights (seeded, one CPU thread)."""
    import contextlib
    import io
    import subprocess

    from lib.io import cli
    from lib.tools import dictionaries as train

    def run_cli(_, *args):  # the trainer's CLI in this process
        err, code = io.StringIO(), 0
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                cli.main(train.app, list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        return subprocess.CompletedProcess(args, code, "", err.getvalue())

    for run in ("a", "b"):
        r = run_cli(
            "lib/tools/dictionaries.py",
            "--out",
            str(tmp_path / run),
            "--sites",
            "embed",
            "tc0",
            "--steps",
            "30",
            "--n-per-task",
            "4",
            "--width",
            "32",
            "--k",
            "4",
            "--quiet",
        )
        assert r.returncode == 0, r.stderr
    for name in ("embed", "tc0"):
        a, b = (tmp_path / run / name / "sae_weights.safetensors" for run in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()
    d = files.read(tmp_path / "a" / "tc0")
    assert d.kind == "transcoder" and d.hook_name == "blocks.0.ln2.hook_normalized" and d.k == 4
    report = (tmp_path / "a" / "report.csv").read_text().splitlines()
    assert report[0].startswith("dictionary,kind,hook_name,hook_name_out,d_sae,k,fvu,l0,dead_fraction,kl_spliced")
    r = run_cli("lib/tools/dictionaries.py", "--out", str(tmp_path / "a"), "--quiet")
    assert r.returncode == 2 and "exists; a dictionary set is never overwritten" in r.stderr
    r = run_cli("lib/tools/dictionaries.py", "--out", str(tmp_path / "c"), "--sites", "resid9", "--quiet")
    assert r.returncode == 2 and "unknown site resid9" in r.stderr


def test_shipped_toy_set_fits_the_toy_model(toy):
    """Every site of part 1 (embedding; attention, MLP output, residual stream per layer), per-layer MLP
    transcoders and the cross-layer transcoder; spliced with their errors the toy model is unchanged; their
    reconstructions are good."""
    import pandas as pd

    from lib.core.model import TOY_DIR

    where = TOY_DIR / "dictionaries"
    shipped = files.read_set(where)
    expected = {"embed", "clt"} | {f"{s}{l}" for s in ("attn", "mlp", "resid", "tc") for l in range(toy.n_layers)}
    assert set(shipped) == expected and shipped["clt"].kind == "clt" and shipped["clt"].n_layers == toy.n_layers
    files.check_against(shipped, toy)
    tokens = tokens_of(toy)
    with torch.no_grad():
        reference = toy.bridge(tokens)
        saes_and_transcoders = {n: d for n, d in shipped.items() if n != "clt"}
        torch.testing.assert_close(spliced_logits(toy, tokens, saes_and_transcoders), reference, atol=1e-4, rtol=1e-4)
        from lib.features.replacement import replacement_hooks  # the cross-layer transcoder with its error nodes

        clt = toy.bridge.run_with_hooks(tokens, fwd_hooks=replacement_hooks(shipped["clt"], range(4), errors="live"))
        torch.testing.assert_close(clt, reference, atol=1e-4, rtol=1e-4)
    report = pd.read_csv(where / "report.csv").set_index("dictionary")
    assert set(report.index) == expected and (report.fvu < 0.25).all() and (report.l0 <= 8).all()


def test_trainer_reproduces_a_shipped_dictionary_bit_for_bit(tmp_path):
    """The shipped set is exactly the trainer's default output: retraining one site gives its bytes."""
    import contextlib
    import io

    from lib.core.model import TOY_DIR
    from lib.io import cli
    from lib.tools import dictionaries as train

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli.main(train.app, ["--model", "toy", "--out", str(tmp_path / "set"), "--sites", "tc3", "--quiet"])
    for name in ("sae_weights.safetensors", "cfg.json"):
        assert (tmp_path / "set" / "tc3" / name).read_bytes() == (TOY_DIR / "dictionaries" / "tc3" / name).read_bytes()


def test_dictionaries_option_resolves_toy_folders_and_refuses_offline_hub(tmp_path, toy):
    from lib.core.model import TOY_DIR

    assert files.resolve("toy") == TOY_DIR / "dictionaries"
    assert set(files.load_set("toy", toy)) >= {"embed", "tc0"}
    files.write(tmp_path / "one" / "resid1", random_dictionary("blocks.1.hook_resid_post", 64, 64, 3))
    assert list(files.load_set(str(tmp_path / "one"), toy)) == ["resid1"]
    with pytest.raises(UserError, match="no such folder"):
        files.resolve(str(tmp_path / "missing"))
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="is a file"):
        files.resolve(str(tmp_path / "f"))
    with pytest.raises(UserError, match="from the Hugging Face hub \\(offline or unreachable\\)"):
        files.resolve("jbloom/GPT2-Small-SAEs-Reformatted")


def _site_gradient(toy, data, hook_name):
    """d metric / d (the activation at hook_name), per element, in the plain model (an independent route)."""
    from lib.core.forward import stop_before_unembedding
    from lib.features.effects import _metric

    delta = {}

    def add(x, hook):
        delta["d"] = torch.zeros_like(x, requires_grad=True)
        return x + delta["d"]

    with torch.enable_grad():
        resid = toy.bridge.run_with_hooks(data.clean, fwd_hooks=[(hook_name, add), stop_before_unembedding()])
        _metric(toy, data, resid).sum().backward()
    return delta["d"].grad


def test_attribution_node_effects_equal_the_plain_gradient_through_each_site(toy):
    """Summed over a site's features and error node, attribution patching is (x' - x) . d metric / d x at that
    site in the plain model: decode is linear and every spliced site passes gradients through unchanged."""
    from lib.core.forward import capture
    from lib.core.model import TOY_DIR
    from lib.features.effects import node_effects
    from tasks import TASKS

    shipped = files.read_set(TOY_DIR / "dictionaries")
    chosen = {k: shipped[k] for k in ("embed", "attn1", "mlp2", "resid1", "tc3")}
    data = TASKS["ioi"].build(toy.tokenizer, 6, 0)
    effects = node_effects(toy, chosen, data, "attrib", "corrupted")
    hooks = [d.hook_name_out for d in chosen.values()]
    clean, corrupt = capture(toy, data.clean, hooks), capture(toy, data.corrupt, hooks)
    real = (torch.arange(data.clean.shape[1])[None] < data.lengths[:, None])[..., None]
    for name, d in chosen.items():
        g = _site_gradient(toy, data, d.hook_name_out)
        expected = ((corrupt[d.hook_name_out] - clean[d.hook_name_out]) * g * real).sum((1, 2))  # [N]
        got = effects[name]["features"].sum((1, 2)) + effects[name]["error"].sum(1)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    zero = node_effects(toy, {"resid1": chosen["resid1"]}, data, "attrib", "zero")["resid1"]
    f = chosen["resid1"].encode(clean["blocks.1.hook_resid_post"])
    assert torch.all((zero["features"] == 0) | (f > 0))  # only active features move when patched to zero


def test_integrated_gradients_approach_the_exact_patch_of_a_whole_site(toy):
    """With many steps, a site's IG node effects sum to the exact effect of patching the site's whole output."""
    from lib.core.forward import capture, stop_before_unembedding
    from lib.core.model import TOY_DIR
    from lib.features.effects import _metric, node_effects
    from tasks import TASKS

    shipped = files.read_set(TOY_DIR / "dictionaries")
    data = TASKS["sva"].build(toy.tokenizer, 4, 1)
    for name in ("resid1", "tc2"):
        d = shipped[name]
        effects = node_effects(toy, {name: d}, data, "ig", "corrupted", steps=200)[name]
        patch = capture(toy, data.corrupt, [d.hook_name_out])[d.hook_name_out]
        with torch.no_grad():
            base = _metric(toy, data, toy.bridge.run_with_hooks(data.clean, fwd_hooks=[stop_before_unembedding()]))
            moved = _metric(
                toy,
                data,
                toy.bridge.run_with_hooks(
                    data.clean,
                    fwd_hooks=[(d.hook_name_out, lambda x, hook, patch=patch: patch), stop_before_unembedding()],
                ),
            )
        total = effects["features"].sum((1, 2)) + effects["error"].sum(1)
        assert (total - (moved - base)).abs().max() < 1e-3 * (1 + (moved - base).abs().max()), name


def test_ablation_identities(toy):
    """Every node kept = the model; every node ablated = the model with each site at its reference mean; every
    feature kept with the errors removed = the replacement model (spliced without errors)."""
    from lib.core.forward import capture, stop_before_unembedding
    from lib.core.model import TOY_DIR
    from lib.features.ablate import ablated_metric, every_node, reference_values
    from lib.features.effects import _metric
    from tasks import TASKS

    shipped = {n: d for n, d in files.read_set(TOY_DIR / "dictionaries").items() if d.kind != "clt"}  # part 1's
    data = TASKS["ioi"].build(toy.tokenizer, 6, 0)
    with torch.no_grad():
        model_metric = _metric(toy, data, toy.bridge.run_with_hooks(data.clean, fwd_hooks=[stop_before_unembedding()]))
    values = reference_values(toy, shipped, data, "mean")
    everything, nothing = every_node(shipped, data, True), every_node(shipped, data, False)
    torch.testing.assert_close(
        ablated_metric(toy, shipped, data, everything, values), model_metric, atol=1e-4, rtol=1e-4
    )
    # every node ablated: each site carries the reference prompts' mean activation at each position
    hooks = sorted({d.hook_name_out for d in shipped.values()})
    acts = capture(toy, data.corrupt, hooks)
    real = (torch.arange(data.corrupt.shape[1])[None] < data.lengths[:, None])[..., None].float()
    means = {h: (acts[h] * real).sum(0) / real.sum(0).clamp_min(1) for h in hooks}  # [P, D]
    with torch.no_grad():
        resid = toy.bridge.run_with_hooks(
            data.clean,
            fwd_hooks=[
                *[(h, lambda x, hook, _m=means[h]: _m[None, : x.shape[1]].expand_as(x)) for h in hooks],
                stop_before_unembedding(),
            ],
        )
    at_means = _metric(toy, data, resid)
    ablated = ablated_metric(toy, shipped, data, nothing, values)
    torch.testing.assert_close(ablated, at_means, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ablated_metric(toy, shipped, data, everything, values, complement=True), ablated)
    # batches of prompts give the same values and metrics as one pass
    for name, parts in reference_values(toy, shipped, data, "mean", batch_size=4).items():
        for k, v in parts.items():
            torch.testing.assert_close(v, values[name][k], atol=1e-5, rtol=1e-5)
    half = {
        s: {"features": m["features"] & (torch.arange(m["features"].shape[-1]) % 2 == 0), "error": m["error"]}
        for s, m in everything.items()
    }
    torch.testing.assert_close(
        ablated_metric(toy, shipped, data, half, values, batch_size=4),
        ablated_metric(toy, shipped, data, half, values),
        atol=1e-5,
        rtol=1e-5,
    )
    # every feature kept, every error removed: the replacement model
    with torch.no_grad():
        replaced = _metric(
            toy,
            data,
            toy.bridge.run_with_hooks(
                data.clean, fwd_hooks=[*splice_hooks(shipped, with_error=False), stop_before_unembedding()]
            ),
        )
    torch.testing.assert_close(
        ablated_metric(toy, shipped, data, everything, values, errors="remove"), replaced, atol=1e-4, rtol=1e-4
    )


def test_edge_effects_on_the_residual_identity_path_are_exact(toy):
    """resid0 -> resid1 with attn1 and mlp1 held fixed: d a_d / d a_u is the identity path, so the edge effect is
    sum_p g_d * [d active] * W_enc[:, d] . (W_dec[u] * delta f_u), computed here without autograd."""
    from lib.core.model import TOY_DIR
    from lib.features.edges import edge_effects
    from lib.features.effects import folded_gradients, node_states
    from tasks import TASKS

    shipped = files.read_set(TOY_DIR / "dictionaries")
    chosen = {k: shipped[k] for k in ("resid0", "attn1", "mlp1", "resid1")}
    data = TASKS["ioi"].build(toy.tokenizer, 5, 0)
    clean, patched = node_states(toy, chosen, data.clean), node_states(toy, chosen, data.corrupt)
    grads = folded_gradients(toy, chosen, data, clean)
    d_feature = int(clean["resid1"]["features"].sum((0, 1)).argmax())  # a feature that fires
    upstream = {"resid0": (torch.ones(D_SAE_TOY, dtype=torch.bool), True)}
    rows = edge_effects(toy, chosen, data, {"resid1": ([d_feature], False)}, upstream, clean, patched, grads)
    got = {r["upstream"]: r["effect"] for r in rows if r["downstream"] == f"resid1/f{d_feature}"}
    up, down = chosen["resid0"], chosen["resid1"]
    real = (torch.arange(data.clean.shape[1])[None] < data.lengths[:, None]).float()  # [N, P]
    active = (clean["resid1"]["features"][..., d_feature] > 0).float()  # TopK keeps it and ReLU passes it
    weight = grads["resid1"][0][..., d_feature] * active * real  # [N, P]
    delta = patched["resid0"]["features"] - clean["resid0"]["features"]  # [N, P, d_sae]
    through = up.W_dec @ down.W_enc[:, d_feature]  # [d_sae]: each upstream feature's write onto d's encoder
    expected = (weight[..., None] * delta * through).sum(1).mean(0)
    for j in torch.nonzero(expected.abs() > 1e-6).flatten().tolist():
        assert abs(got[f"resid0/f{j}"] - float(expected[j])) <= 1e-5 + 1e-4 * abs(float(expected[j]))
    err_delta = patched["resid0"]["error"] - clean["resid0"]["error"]
    expected_err = (weight[..., None] * err_delta * down.W_enc[:, d_feature]).sum((1, 2)).mean(0)
    assert abs(got["resid0/err"] - float(expected_err)) <= 1e-5 + 1e-4 * abs(float(expected_err))


def test_edge_effects_agree_with_exact_feature_patching_off_the_identity_path(toy):
    """attn1 -> mlp1 passes through LayerNorm and the MLP: the edge (first order) against patching the upstream
    feature alone and measuring the downstream feature's change, weighted by the same gradient. Agreement, not
    equality: the correlation over upstream features is reported and must be high."""
    from lib.core.forward import stop_before_unembedding
    from lib.core.model import TOY_DIR
    from lib.features.edges import edge_effects
    from lib.features.effects import folded_gradients, node_states
    from tasks import TASKS

    shipped = files.read_set(TOY_DIR / "dictionaries")
    chosen = {k: shipped[k] for k in ("attn1", "mlp1")}
    data = TASKS["ioi"].build(toy.tokenizer, 6, 0)
    clean, patched = node_states(toy, chosen, data.clean), node_states(toy, chosen, data.corrupt)
    grads = folded_gradients(toy, chosen, data, clean)
    real = (torch.arange(data.clean.shape[1])[None] < data.lengths[:, None]).float()
    d = int((clean["mlp1"]["features"] * real[..., None]).sum((0, 1)).argmax())
    delta = (patched["attn1"]["features"] - clean["attn1"]["features"]) * real[..., None]
    moved = torch.nonzero(delta.abs().sum((0, 1)) > 1e-6).flatten().tolist()[:40]
    keep = torch.zeros(D_SAE_TOY, dtype=torch.bool)
    keep[moved] = True
    rows = edge_effects(toy, chosen, data, {"mlp1": ([d], False)}, {"attn1": (keep, False)}, clean, patched, grads)
    first_order = {r["upstream"]: r["effect"] for r in rows}
    up, down = chosen["attn1"], chosen["mlp1"]
    g = grads["mlp1"][0][..., d] * real

    def f_d_with(features):
        captured = {}

        def write(x, hook):
            return (up.decode(features) + clean["attn1"]["error"]).to(x.dtype)

        def read(x, hook):
            captured["f"] = down.encode(x)[..., d]
            return x

        with torch.no_grad():
            toy.bridge.run_with_hooks(
                data.clean, fwd_hooks=[(up.hook_name_out, write), (down.hook_name_out, read), stop_before_unembedding()]
            )
        return captured["f"]

    base = f_d_with(clean["attn1"]["features"])
    exact, approx = [], []
    for j in moved:
        features = clean["attn1"]["features"].clone()
        features[..., j] = patched["attn1"]["features"][..., j]
        exact.append(float(((f_d_with(features) - base) * g).sum(1).mean(0)))
        approx.append(first_order[f"attn1/f{j}"])
    exact, approx = np.array(exact), np.array(approx)
    assert len(exact) >= 5 and np.corrcoef(exact, approx)[0, 1] > 0.9, (np.corrcoef(exact, approx)[0, 1], exact, approx)


def test_resid_pre_dictionaries_are_the_previous_layers_residual_site(toy):
    """SAELens's GPT-2 residual SAEs read blocks.l.hook_resid_pre: that is resid{l-1} (and embed for l = 0), and
    splicing there leaves the model unchanged as at resid_post."""
    d = random_dictionary("blocks.2.hook_resid_pre", toy.d_model, toy.d_model, 4)
    assert site(d) == "resid1" and site(random_dictionary("blocks.0.hook_resid_pre", 64, 64, 4)) == "embed"
    tokens = tokens_of(toy)
    with torch.no_grad():
        reference = toy.bridge(tokens)
    torch.testing.assert_close(spliced_logits(toy, tokens, {"r": d}), reference, atol=1e-5, rtol=1e-5)


def test_resample_ablation_of_every_node_is_the_corrupted_model(toy):
    """Every node replaced by its paired corrupted prompt's value: every site carries the corrupted activation,
    so the metric is the model's on the corrupted prompt (DEFINITIONS.md, Patching an edge's identity, at feature level)."""
    from lib.core.forward import stop_before_unembedding
    from lib.core.model import TOY_DIR
    from lib.features.ablate import ablated_metric, every_node, reference_values
    from lib.features.effects import _metric
    from tasks import TASKS

    shipped = {k: v for k, v in files.read_set(TOY_DIR / "dictionaries").items() if v.kind == "sae"}
    data = TASKS["sva"].build(toy.tokenizer, 6, 0)
    values = reference_values(toy, shipped, data, "resample")
    batched = reference_values(toy, shipped, data, "resample", batch_size=4)  # equal inside every prompt
    real = data.real[..., None]
    assert all(torch.allclose(batched[s][k] * real, values[s][k] * real, atol=1e-5) for s in values for k in values[s])
    with torch.no_grad():
        corrupted = _metric(toy, data, toy.bridge.run_with_hooks(data.corrupt, fwd_hooks=[stop_before_unembedding()]))
    got = ablated_metric(toy, shipped, data, every_node(shipped, data, False), values)
    torch.testing.assert_close(got, corrupted, atol=1e-4, rtol=1e-4)


def test_clt_trainer_auxk_when_only_a_later_layer_has_dead_latents():
    """AuxK with dead latents in layer 1 only: layer 0's output gets no auxiliary write and must still broadcast
    (a checkpoint of toy with such latents crashed the trainer)."""
    import torch

    from lib.tools.dictionaries import train_clt

    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(32, 6, generator=gen), torch.zeros(32, 6)]  # layer 1's latents never fire: dead at once
    ys = [torch.randn(32, 5, generator=gen), torch.randn(32, 5, generator=gen)]
    # one latent per layer, 16 tokens a step: layer 0's fires on some token of every batch, layer 1's never does
    tc = train_clt(xs, ys, 1, 1, 3, 16, 1e-3, 0, dead_after=16, cfg={}, hooks_in=["a", "b"], hooks_out=["c", "d"])
    assert all(torch.isfinite(w).all() for w in tc.W_dec)
