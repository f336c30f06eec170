"""DLA: components plus bias terms add up to the model's logit difference; direction matches the metric."""

import pytest
import torch

from lib.core.forward import answer_logits
from lib.core.metrics import data_metric
from lib.methods.dla import answer_weights, direct_logit_attribution
from tasks import TASK_NAMES, TASKS


@pytest.mark.parametrize("name", TASK_NAMES)
def test_components_sum_to_logit_difference(tiny, name):
    data = TASKS[name].build(tiny.tokenizer, 12, 0)
    r = direct_logit_attribution(tiny, data, batch_size=5)
    assert r.attributions.shape == (12, 1 + tiny.n_layers * tiny.n_heads + tiny.n_layers)
    torch.testing.assert_close(r.attributions.sum(1) + r.bias, r.model_diff, atol=1e-4, rtol=1e-4)
    assert r.bias.abs().max() > 1e-3  # random biases: the check really covers the bias terms
    # the model difference is the metric's own logit difference (exact for the logit-based metrics)
    logits = answer_logits(tiny, data.clean, data.answer_pos, 64)
    w = answer_weights(logits.double(), data)
    torch.testing.assert_close((w * logits.double()).sum(-1), r.model_diff, atol=1e-4, rtol=1e-4)
    if data.metric_kind != "prob_diff":
        torch.testing.assert_close(data_metric(logits, data), r.model_diff, atol=1e-4, rtol=1e-4)


def test_single_component_matches_removal_with_frozen_scale(tiny):
    """Removing one head's output from the final residual (scale frozen) drops the logit diff by its DLA."""
    data = TASKS["ioi"].build(tiny.tokenizer, 4, 1)
    r = direct_logit_attribution(tiny, data, batch_size=4)
    bridge, L = tiny.bridge, tiny.n_layers
    rows, pos = torch.arange(4), data.answer_pos
    _, cache = bridge.run_with_cache(data.clean)
    final = cache[f"blocks.{L - 1}.hook_resid_post"][rows, pos].double()
    head = cache["blocks.1.attn.hook_result"][rows, pos, 2].double()
    scale = cache["ln_final.hook_scale"][rows, pos].double()

    def logit_diff(x):
        x = (x - x.mean(-1, keepdim=True)) / scale
        logits = x @ bridge.W_U.double() + bridge.b_U.double()
        return logits.gather(1, data.correct[:, :1])[:, 0] - logits.gather(1, data.wrong[:, :1])[:, 0]

    drop = logit_diff(final) - logit_diff(final - head)
    torch.testing.assert_close(drop, r.attributions[:, r.components.index("a1.h2")], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["ioi", "greater-than"])
def test_residual_stream_view_ends_at_the_logit_difference(tiny, name):
    """The accumulated projection after the last layer is the model's logit difference (the unembedding bias
    included); each step adds exactly what its stage writes; DLA's per-layer heads sum to the attention write
    up to the output bias."""
    from lib.methods.dla import residual_by_layer

    data = TASKS[name].build(tiny.tokenizer, 6, 0)
    r = direct_logit_attribution(tiny, data, batch_size=4)
    layers = residual_by_layer(tiny, data, batch_size=4)
    torch.testing.assert_close(layers["stream"][:, -1], r.model_diff, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layers["stream"].diff(dim=1), layers["write"][:, 1:], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(layers["write"][:, 0], r.attributions[:, 0], atol=1e-6, rtol=1e-6)
    assert (layers["norms"] > 0).all() and layers["write"][:, 1:].abs().max() > 1e-3
