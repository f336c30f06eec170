"""Every decoder architecture: the identities of DEFINITIONS.md, Patching an edge on tiny random models (perturbed biases and norm
weights), or the one-line refusal. GPT-2 is checked the same way in test_patching/test_eap/test_acdc."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch
import transformers as T
from test_patching import slow_reference

from lib.core.errors import UserError
from lib.core.forward import answer_logits, logits_at
from lib.core.graph import graph_of
from lib.core.metrics import data_metric
from lib.core.model import from_hf, random_model
from lib.core.patching import (
    ablate_mask,
    ablation_values,
    as_sources,
    evaluate_mask,
    masked_answer_logits,
    receiver_groups,
    source_hooks,
)
from lib.methods.acdc import PartialRunner
from lib.methods.dla import direct_logit_attribution
from lib.methods.eap import edge_scores
from tasks import TASKS

SHAPE: dict[str, Any] = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    initializer_range=0.3,
)


def tiny_configs(vocab: int) -> dict:
    """One tiny config per architecture; the GQA ones with fewer key/value heads than query heads."""
    s = dict(SHAPE, vocab_size=vocab)
    return {
        "gpt-neox": (
            T.GPTNeoXForCausalLM,
            T.GPTNeoXConfig(
                **s,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                use_parallel_residual=True,
            ),
        ),
        "llama": (T.LlamaForCausalLM, T.LlamaConfig(**s, num_key_value_heads=2, attention_bias=True)),
        "llama3.2": (  # Llama 3.2's own parts: llama3 rope scaling, tied embeddings, head_dim given
            T.LlamaForCausalLM,
            T.LlamaConfig(
                **s,
                num_key_value_heads=2,
                head_dim=8,
                tie_word_embeddings=True,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 32.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 16,
                },
            ),
        ),
        "qwen3": (T.Qwen3ForCausalLM, T.Qwen3Config(**s, num_key_value_heads=2, head_dim=8)),
        "mistral": (T.MistralForCausalLM, T.MistralConfig(**s, num_key_value_heads=2)),
        "qwen2": (T.Qwen2ForCausalLM, T.Qwen2Config(**s, num_key_value_heads=1)),
        "gemma": (T.GemmaForCausalLM, T.GemmaConfig(**s, num_key_value_heads=2, head_dim=8)),
        "gemma2": (  # soft-caps as gemma-2-2b does (final 30, attention 50) and alternates sliding windows
            T.Gemma2ForCausalLM,
            T.Gemma2Config(**s, num_key_value_heads=2, head_dim=8, sliding_window=4),
        ),
        "opt": (
            T.OPTForCausalLM,
            T.OPTConfig(
                vocab_size=vocab,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                ffn_dim=64,
                word_embed_proj_dim=32,
            ),
        ),
        "gpt-j": (
            T.GPTJForCausalLM,
            T.GPTJConfig(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64),
        ),
    }


SUPPORTED = ["gpt-neox", "llama", "llama3.2", "mistral", "qwen2", "qwen3", "gemma", "gemma2"]
KV_HEADS = {"gpt-neox": 4, "llama": 2, "llama3.2": 2, "mistral": 2, "qwen2": 1, "qwen3": 2, "gemma": 2, "gemma2": 2}
REFUSED = {
    "opt": "is not supported: TransformerBridge has no per-head attention results for this architecture "
    "(set_use_attn_result is not implemented)",
    "gpt-j": "is not supported: TransformerBridge has no per-head attention results for this architecture "
    "(set_use_attn_result is not implemented)",
}


def twins(cls, cfg):
    """Two Hugging Face models with the same seeded weights: one stays untouched as the reference, the other
    is handed to the bridge (which modifies the module it wraps)."""
    return tuple(random_model(cls, cfg, seed=5, random_biases=True).eval() for _ in range(2))


def build(arch: str, tokenizer):
    """(the Hugging Face model as built, untouched; the same weights loaded for circuit work)."""
    reference, hf = twins(*tiny_configs(len(tokenizer))[arch])
    return reference, from_hf(hf, tokenizer, arch)


@pytest.fixture(scope="module", params=SUPPORTED)
def arch(request, toy_tokenizer):
    reference, model = build(request.param, toy_tokenizer)
    data = TASKS["ioi"].build(toy_tokenizer, 6, 0)
    return request.param, reference, model, graph_of(model), data


def test_architecture_facts_come_from_the_config(arch):
    name, _, model, g, _ = arch
    a = model.arch
    assert a.parallel == (name == "gpt-neox") and g.parallel == a.parallel
    assert a.norm == ("LN" if name == "gpt-neox" else "RMS") and a.positional == "rotary"
    assert a.n_kv_heads == KV_HEADS[name]
    assert a.post_norms == (("ln1_post", "ln2_post") if name == "gemma2" else ())
    # k/v receivers per query head (GQA ungrouped); a parallel MLP has no edges from its own layer's heads
    assert g.n_edges == graph_of_gpt2_shape(model).n_edges - (model.n_layers * model.n_heads if a.parallel else 0)


def graph_of_gpt2_shape(model):
    from lib.core.graph import Graph

    return Graph(model.n_layers, model.n_heads)


def test_answer_logits_equal_the_models_own(arch):
    """Up to a constant per row (the bridge centres the unembedding), so log-probabilities are equal."""
    _, reference, model, _, data = arch
    ours = answer_logits(model, data.clean, data.answer_pos, 4)
    with torch.no_grad():
        theirs = reference(data.clean).logits[torch.arange(len(data)), data.answer_pos]
    torch.testing.assert_close(ours.log_softmax(-1), theirs.log_softmax(-1), atol=2e-5, rtol=1e-5)


def test_receiver_inputs_are_sums_of_source_outputs(arch):
    """Every receiver's input = sum of the outputs of the sources that write before it + a constant."""
    from lib.core.forward import capture

    _, _, model, g, data = arch
    names = [n for n, _ in source_hooks(g)] + [n for n, _, _ in receiver_groups(g)]
    cache = capture(model, data.clean, dict.fromkeys(names))
    outs = torch.cat([as_sources(cache[n]) for n, _ in source_hooks(g)])  # [S, B, P, D]
    for name, _cols, n_before in receiver_groups(g):
        x = cache[name]
        x = x if x.dim() == 4 else x.unsqueeze(2)  # [B, P, h, D]
        rest = x - outs[:n_before].sum(0).unsqueeze(2)
        spread = (rest - rest[:1, :1]).abs().max().item()
        assert spread < 1e-4 * max(1.0, x.abs().max().item()), (name, spread)
    # and not trivially: a parallel MLP does not read its own layer's heads
    if g.parallel:
        x, heads = cache["blocks.1.hook_mlp_in"], outs[g.head_source(1, 0) : g.mlp_source(1)].sum(0)
        assert (x - outs[: g.sources_before_mlp(1)].sum(0) - heads).std() > 1e-2


def test_all_kept_is_clean_and_all_ablated_is_corrupted(arch):
    _, _, model, g, data = arch
    clean = answer_logits(model, data.clean, data.answer_pos, 4)
    corrupt = answer_logits(model, data.corrupt, data.answer_pos, 4)
    torch.testing.assert_close(evaluate_mask(model, g, data, g.edge_exists, batch_size=4), clean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        evaluate_mask(model, g, data, torch.zeros_like(g.edge_exists), batch_size=4), corrupt, atol=1e-4, rtol=1e-4
    )


def test_edge_set_matches_slow_reference(arch):
    _, _, model, g, data = arch
    keep = (torch.rand(g.n_sources, g.n_receivers, generator=torch.Generator().manual_seed(2)) < 0.5) & g.edge_exists
    ablate = ablate_mask(g, keep)
    values = ablation_values(model, g, data, "resample")
    for mode in ("ablated", "kept"):
        from lib.core.patching import EdgePatch

        hooks = EdgePatch(g, values, ablate, mode).hooks()
        fast = logits_at(model, data.clean, data.answer_pos, hooks)
        torch.testing.assert_close(fast, slow_reference(model, g, data, values, ablate), atol=1e-4, rtol=1e-4)


def test_eap_equals_autograd_on_the_mask(arch):
    _, _, model, g, data = arch
    scores = edge_scores(model, g, data, batch_size=3, method="eap")
    ablate = torch.zeros(g.n_sources, g.n_receivers, requires_grad=True)
    values = ablation_values(model, g, data, "resample")
    data_metric(masked_answer_logits(model, g, data, values, ablate, grad=True), data).mean().backward()
    expected = (ablate.grad * g.edge_exists).double()
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(scores, expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-4)


def test_acdc_partial_recompute_equals_the_full_forward_at_every_start_layer(arch):
    _, _, model, g, data = arch
    runner = PartialRunner(model, g, data, "resample", batch_size=4)
    gen = torch.Generator().manual_seed(3)
    receiver_layers = torch.tensor([g.receiver_layer(r) for r in range(g.n_receivers)])
    values = ablation_values(model, g, data, "resample")
    for start in range(g.n_layers + 1):
        # what ACDC has removed before a trial at this layer: edges into receivers at layers >= start
        ablate = (
            (torch.rand(g.n_sources, g.n_receivers, generator=gen) < 0.3)
            & g.edge_exists
            & (receiver_layers >= start)[None]
        ).float()
        runner.ablate.copy_(ablate)
        with model.bridge.hooks(fwd_hooks=runner.hooks()):
            partial = torch.cat([runner.logits(i, start) for i in range(len(runner.batches))])
        full = masked_answer_logits(model, g, data, values, ablate)
        torch.testing.assert_close(partial, full, atol=1e-4, rtol=1e-4)
        assert start == g.n_layers or (full - torch.cat(runner.clean_logits)).abs().max() > 1e-3


def test_dla_sums_with_a_constant_bias_term(arch):
    _, _, model, _, data = arch
    if model.arch.softcap is not None:  # Gemma 2: tanh is not additive, DLA refuses
        with pytest.raises(UserError, match="soft-capped"):
            direct_logit_attribution(model, data, batch_size=4)
        return
    r = direct_logit_attribution(model, data, batch_size=4)
    error = (r.model_diff - r.attributions.sum(1) - r.bias).abs().max().item()
    assert error < 1e-4 * max(1.0, r.model_diff.abs().max().item())
    assert r.bias_spread < 1e-5 and r.attributions.abs().max() > 1e-3
    from lib.methods.dla import residual_by_layer

    stream = residual_by_layer(model, data, batch_size=4)["stream"]  # the logit lens ends at the logit difference
    torch.testing.assert_close(
        stream[:, -1], r.model_diff, atol=1e-4 * max(1.0, r.model_diff.abs().max().item()), rtol=1e-4
    )


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_architectures_say_why_in_one_line(name, toy_tokenizer):
    with pytest.raises(UserError) as e:
        build(name, toy_tokenizer)
    assert REFUSED[name] in str(e.value) and "\n" not in str(e.value)


def test_soft_capped_logits_are_the_models_own(toy_tokenizer):
    """unembed_at applies the final soft-cap (Gemma 2) where it bends the logits, DLA refuses it, and the heads'
    shares of the post-attention norm pass the load-time identity probe."""
    from lib.core.identity import identity_error

    cls, cfg = tiny_configs(len(toy_tokenizer))["gemma2"]
    cfg.final_logit_softcapping = 0.5  # small, so that it really bends these logits
    reference, hf = twins(cls, cfg)
    model = from_hf(hf, toy_tokenizer, "gemma2")
    assert model.arch.softcap == 0.5
    tokens = torch.tensor([[1, 5, 9, 12], [1, 7, 3, 4]])
    pos = torch.tensor([3, 2])
    with torch.no_grad():
        theirs = reference(tokens).logits[torch.arange(2), pos]
    ours = logits_at(model, tokens, pos)
    assert theirs.abs().max() <= 0.5 and (theirs.max(-1).values - theirs.min(-1).values).min() > 0.1
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert identity_error(model) is None
    with pytest.raises(UserError, match="soft-capped"):
        direct_logit_attribution(model, TASKS["ioi"].build(toy_tokenizer, 2, 0))


def test_head_shares_add_up_to_the_post_normed_attention_output(toy_tokenizer):
    """Gemma 2: each head's output is its result times the norm's gain over the layer's live scale; the shares
    sum to what the block adds to the residual stream (resid_mid - resid_pre), in the clean and in a patched run."""
    _, hf = twins(*tiny_configs(len(toy_tokenizer))["gemma2"])
    model = from_hf(hf, toy_tokenizer, "gemma2")
    tokens = torch.tensor([[1, 5, 9, 12, 40], [1, 7, 3, 4, 8]])
    names = [f"blocks.{l}.{h}" for l in range(2) for h in ("attn.hook_result", "hook_resid_pre", "hook_resid_mid")]
    names += [f"blocks.{l}.attn.hook_post_scale" for l in range(2)]
    for patched in (False, True):  # a patched run: the scale is recomputed, the sum still holds
        c = {}

        def keep(name, c=c):
            return lambda x, hook: c.__setitem__(name, x.detach())

        hooks: list = [(n, keep(n)) for n in names] + (
            [("blocks.0.hook_q_input", lambda x, hook: x + 0.3)] if patched else []
        )
        with torch.no_grad():
            model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        for l in range(2):
            added = c[f"blocks.{l}.hook_resid_mid"] - c[f"blocks.{l}.hook_resid_pre"]
            torch.testing.assert_close(c[f"blocks.{l}.attn.hook_result"].sum(2), added, atol=1e-5, rtol=1e-5)
            assert c[f"blocks.{l}.attn.hook_post_scale"].shape == (2, 5, 1)


class Rewriting:
    """A tokenizer that rewrites every text before tokenizing it (everything else as the wrapped one's)."""

    def __init__(self, tokenizer, rewrite):
        self.tokenizer, self.rewrite = tokenizer, rewrite

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, texts, **kw):
        if isinstance(texts, str):
            return {"input_ids": self([texts], **kw)["input_ids"][0]}
        return self.tokenizer([self.rewrite(t) for t in texts], **kw)


def test_greater_than_refuses_a_digit_splitting_tokenizer(toy_tokenizer):
    digit_splitting = Rewriting(toy_tokenizer, lambda t: re.sub(r"(\d)(?=\d)", r"\1 ", t))  # as Llama 3's, Qwen's
    with pytest.raises(UserError, match="task greater-than needs every two-digit year ending 00..99 as one token"):
        TASKS["greater-than"].build(digit_splitting, 4, 0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, toy_tokenizer):
    """Tiny models saved as local Hugging Face directories, loaded by the scripts as a user's would be."""

    def save(arch: str):
        where = tmp_path_factory.mktemp(arch)
        cls, cfg = tiny_configs(len(toy_tokenizer))[arch]
        random_model(cls, cfg, seed=5, random_biases=True).save_pretrained(where)
        toy_tokenizer.save_pretrained(where)
        return where

    return save


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_scripts_refuse_in_one_line_and_write_nothing(name, saved, tmp_path):
    from conftest import run_cli

    r = run_cli("05_eap.py", "--model", str(saved(name)), "--tasks", "ioi", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().startswith("error: model ") and REFUSED[name] in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name,script",
    [("llama", "01_dla.py"), ("gemma2", "06_acdc.py"), ("gemma2", "02_logit_diff.py"), ("gpt-neox", "05_eap.py")],
)
def test_scripts_run_on_other_architectures(name, script, saved, tmp_path):
    """A GQA/RMSNorm/rotary model and a parallel-block one through the CLI: complete runs with the identities
    their checks report (DLA sums with a constant bias; ACDC on rotary blocks through full passes)."""
    import json

    import pandas as pd
    from conftest import run_cli

    r = run_cli(
        script,
        "--model",
        str(saved(name)),
        "--tasks",
        "ioi",
        "--n-prompts",
        "6",
        "--quiet",
        "--n-bootstrap",
        "40",
        "--out",
        str(tmp_path),
        *(["--thresholds", "0.05"] if "acdc" in script else []),
    )
    assert r.returncode == 0, r.stderr
    run = next((tmp_path / script.removesuffix(".py")).iterdir())
    arch = json.loads((run / "run.json").read_text())["model"]["architecture"]
    assert arch["parallel"] == (name == "gpt-neox") and arch["n_kv_heads"] == KV_HEADS[name]
    if script == "02_logit_diff.py":  # Gemma 2: the circuit's faithfulness by both definitions, and the gap
        gap = json.loads((run / "run.json").read_text())["post_norm_gap"]["ioi"]
        assert gap["gap"] == pytest.approx(gap["faithfulness_recomputed_norms"] - gap["faithfulness"])
        assert np.isfinite(gap["faithfulness"]) and np.isfinite(gap["faithfulness_recomputed_norms"])
    if script == "01_dla.py":
        check = pd.read_csv(run / "dla_check.csv")
        assert (check.max_abs_error < 1e-4).all() and (check.bias_spread < 1e-5).all()


def test_words_a_tokenizer_splits_are_dropped_and_recorded(toy_tokenizer):
    """Every token constraint is checked against the loaded tokenizer; what it removed is in dataset.csv."""
    data = TASKS["ioi"].build(Rewriting(toy_tokenizer, lambda t: t.replace("Mary", "Ma ry")), 40, 0)
    frame = data.dataset_frame(toy_tokenizer)
    assert not frame.clean_text.str.contains("Mary").any()
    assert set(frame.vocab_dropped) == {"names: Mary"} and (frame.prompts_dropped == data.n_dropped).all()


def test_models_that_cannot_be_used_give_one_line(tmp_path, toy_tokenizer):
    """Not a causal LM, an architecture the bridge has no adapter for, unreadable weights: exit 2, one
    error line, nothing written."""
    from conftest import run_cli

    cases = {}
    t5 = tmp_path / "t5"
    T.T5Config(vocab_size=len(toy_tokenizer), d_model=16, d_ff=32, num_layers=1, num_heads=2).save_pretrained(t5)
    cases[t5] = "is not a causal language model"
    biogpt = tmp_path / "biogpt"
    T.BioGptForCausalLM(
        T.BioGptConfig(
            vocab_size=len(toy_tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).save_pretrained(biogpt)
    cases[biogpt] = "is not supported: TransformerBridge cannot wrap it"
    broken = tmp_path / "broken"
    cls, cfg = tiny_configs(len(toy_tokenizer))["llama"]
    cls(cfg).save_pretrained(broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    cases[broken] = "cannot load the weights of the model in local directory"
    for where, message in cases.items():
        toy_tokenizer.save_pretrained(where)
        r = run_cli("02_logit_diff.py", "--model", str(where), "--tasks", "ioi", "--out", str(tmp_path / "out"))
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_gemma_2_2b_has_mibs_edge_count(toy_tokenizer):
    """gemma-2-2b's layer and head counts (its hub config: 26 layers, 8 query heads sharing 4 key/value heads), at
    tiny widths, through the same load and graph code: 74,218 edges, MIB's leaderboard count for gemma-2-2b."""
    config = T.Gemma2Config(
        vocab_size=len(toy_tokenizer),
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        hidden_size=16,
        head_dim=2,
        intermediate_size=8,
        max_position_embeddings=32,
    )
    model = from_hf(random_model(T.Gemma2ForCausalLM, config), toy_tokenizer, "gemma-2-2b-shaped")
    g = graph_of(model)
    assert (model.arch.n_kv_heads, len(g.sources), len(g.receivers), g.n_edges) == (4, 235, 651, 74_218)


def test_recomputed_norm_definition_agrees_at_the_ends_and_measures_the_gap(toy_tokenizer):
    """EAP-IG's evaluate_graph definition on Gemma 2 (each receiver's post-attention norm recomputed on its mixture
    of heads): the clean run with every edge kept, the corrupted run with none; on a model without post-norms it
    is the additive definition for any circuit; on Gemma 2 a partial circuit differs (the gap 02 reports)."""
    from lib.core.patching import evaluate_mask
    from lib.methods.post_norm_gap import recomputed_norm_circuit_logits

    data = TASKS["ioi"].build(toy_tokenizer, 4, 0)
    gen = torch.Generator().manual_seed(0)
    for name in ("gemma2", "llama"):
        _, hf = twins(*tiny_configs(len(toy_tokenizer))[name])
        model = from_hf(hf, toy_tokenizer, name)
        g = graph_of(model)
        half = g.edge_exists & (torch.rand(g.edge_exists.shape, generator=gen) < 0.5)
        for keep in (g.edge_exists, torch.zeros_like(g.edge_exists), half):
            ours = evaluate_mask(model, g, data, keep, "resample", 4)
            theirs = recomputed_norm_circuit_logits(model, g, data, keep, 4)
            if name == "llama" or keep is not half:
                torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
            else:
                assert (theirs - ours).abs().max() > 1e-3
        ends = answer_logits(model, data.corrupt, data.answer_pos, 4)
        torch.testing.assert_close(
            recomputed_norm_circuit_logits(model, g, data, torch.zeros_like(g.edge_exists), 4),
            ends,
            atol=1e-4,
            rtol=1e-4,
        )
