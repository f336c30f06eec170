"""Passes restarted mid-model equal full passes with the same hooks, from every start layer up to the first
hooked one (GPT-2 restarts; a rotary model falls back to full passes with the same result)."""

import pytest
import torch
import transformers as T

from lib.core.forward import logits_at
from lib.core.graph import graph_of
from lib.core.model import from_hf, random_model
from lib.core.patching import source_outputs
from lib.core.recompute import Restart
from tasks import TASKS


def hooks_from(layer: int, n_layers: int, d_model: int) -> list:
    """Deterministic changes at layer's head results and MLP input, at every later MLP output, and (at
    n_layers) on the final stream only."""
    g = torch.Generator().manual_seed(layer)
    bump = torch.randn(d_model, generator=g)

    def add(x, hook):
        return x + 0.1 * bump.to(x)

    if layer == n_layers:
        return [(f"blocks.{n_layers - 1}.hook_resid_post", add)]
    return [(f"blocks.{layer}.attn.hook_result", add), (f"blocks.{layer}.hook_mlp_in", add)] + [
        (f"blocks.{l}.hook_mlp_out", add) for l in range(layer, n_layers)
    ]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, tiny, toy_tokenizer):
    if request.param == "gpt2":
        return tiny
    cfg = T.LlamaConfig(
        vocab_size=len(toy_tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.3,
    )
    return from_hf(random_model(T.LlamaForCausalLM, cfg, seed=2).eval(), toy_tokenizer, "llama")


def test_restart_equals_a_full_pass_from_every_start_layer(model):
    data = TASKS["ioi"].build(model.tokenizer, 5, 1)
    restart = Restart(model, data.clean)
    assert restart.full == (model.arch.positional == "rotary")
    L = model.n_layers
    for layer in range(L + 1):
        hooks = hooks_from(layer, L, model.d_model)
        pos = data.answer_pos.repeat(2)
        full = logits_at(model, data.clean.repeat(2, 1), pos, hooks)
        assert not torch.allclose(full, logits_at(model, data.clean.repeat(2, 1), pos))  # the hooks act
        for start in range(layer + 1):
            torch.testing.assert_close(restart.answer_logits(start, pos, hooks, copies=2), full, atol=1e-5, rtol=1e-5)


def test_hooks_before_the_start_layer_are_refused(tiny):
    data = TASKS["ioi"].build(tiny.tokenizer, 3, 1)
    restart = Restart(tiny, data.clean)
    with pytest.raises(ValueError, match="acts before the final stream"):
        restart.answer_logits(tiny.n_layers, data.answer_pos, hooks_from(1, 2, tiny.d_model))
    with pytest.raises(ValueError, match="acts before layer 1"):
        restart.answer_logits(1, data.answer_pos, hooks_from(0, 2, tiny.d_model))
    with pytest.raises(ValueError, match="hook_embed acts before layer 0"):
        restart.answer_logits(0, data.answer_pos, [("hook_embed", lambda x, hook: x)])


def test_outputs_kept_from_the_cache_pass_are_the_source_outputs(model):
    data = TASKS["ioi"].build(model.tokenizer, 4, 2)
    g = graph_of(model)
    torch.testing.assert_close(Restart(model, data.clean, g).outs, source_outputs(model, g, data.clean))
    assert Restart(model, data.clean).outs is None
