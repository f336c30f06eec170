"""Forward passes of the replacement model on the bridge's hooks: MLP outputs replaced by a transcoder set's
reconstruction (lib.features.transcoders), with or without error nodes, features edited for interventions, and
attention patterns and norm scales frozen (circuit-tracer's replacement_model.py: stop_gradient on
hook_pattern and every ln hook_scale; here also replacement by a clean prompt's values for frozen forwards).

The bridge applies ln1 to split q/k/v inputs through the raw norm, bypassing ln1's hooks; `norms_through_hooks`
turns the split inputs off for the duration so that freezing ln1's scale takes effect (the output is the same
to float rounding)."""

from __future__ import annotations

import contextlib
import warnings

import torch

from lib.core.errors import UserError


def frozen_hook_names(model) -> list[str]:
    """The hooks whose values freeze attention and normalization: patterns, ln1/ln2 scales, the final norm's, and
    the post-norms' scales where blocks have them (Gemma 2: the attention's, split across heads by
    lib.core.post_norm, and ln2_post's)."""
    per_layer = ["attn.hook_pattern", "ln1.hook_scale", "ln2.hook_scale"]
    if "ln1_post" in model.arch.post_norms:
        per_layer.append("attn.hook_post_scale")
    if "ln2_post" in model.arch.post_norms:
        per_layer.append("ln2_post.hook_scale")
    names = [f"blocks.{l}.{h}" for l in range(model.n_layers) for h in per_layer]
    names.append("ln_final.hook_scale")
    missing = [n for n in names if n not in model.bridge.hook_dict]
    if missing:
        raise UserError(
            f"model {model.name} has no hook {missing[0]}: attention and norms cannot be frozen for "
            "an attribution graph"
        )
    return names


def frozen_parts(model) -> dict:
    """What the local replacement model holds fixed at the prompt's values (run.json's frozen_for_attribution)."""
    kinds = sorted({n.split(".", 2)[-1] if n.startswith("blocks.") else n for n in frozen_hook_names(model)})
    return {
        "hooks": kinds,  # per block (and ln_final.hook_scale)
        "post_norm_scales": list(model.arch.post_norms),
        "final_logit_softcap_removed": model.arch.softcap,  # logit targets are the logits before it
    }


@contextlib.contextmanager
def norms_through_hooks(model):
    """Split q/k/v inputs off (ln1's hooks then carry its computation), norm-edit warnings silenced; restored after."""
    bridge = model.bridge
    split = bool(getattr(bridge.cfg, "use_split_qkv_input", False))
    attn_in = bool(getattr(bridge.cfg, "use_attn_in", False))
    if split:
        bridge.set_use_split_qkv_input(False)
    if attn_in:
        bridge.set_use_attn_in(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        if split:
            bridge.set_use_split_qkv_input(True)
        if attn_in:
            bridge.set_use_attn_in(True)


def freeze_hooks(model, values: dict | None = None) -> list[tuple]:
    """Hooks freezing patterns and norm scales: detached (values None: gradients stop there), or replaced by a
    clean pass's values {hook: [1, ...]} broadcast over the batch."""

    def hook_for(name):
        if values is None:
            return lambda x, hook: x.detach()
        clean = values
        return lambda x, hook: clean[name].to(x.dtype).expand_as(x)

    return [(n, hook_for(n)) for n in frozen_hook_names(model)]


def frozen_values(model, tokens: torch.Tensor) -> dict:
    """{hook: value [1, ...]} of the frozen hooks on one prompt tokens [1, P]."""
    from lib.core.forward import capture

    with norms_through_hooks(model):
        return capture(model, tokens, frozen_hook_names(model))


def replacement_hooks(tc, layers, errors=None, edit=None, store: dict | None = None, edit_error=None) -> list[tuple]:
    """Forward hooks writing, at each MLP output of `layers`, the reconstruction from the features of `layers`
    (a CLT feature writes its own and later layers among them), plus errors: None (the replacement model),
    "live" (each MLP's own error in this pass: x - reconstruction of the unedited features, so that without
    edits the model is unchanged) or {layer: [B|1, P, d_out]} constants (circuit-tracer's interventions).
    edit(layer, f) returns the features to use, edit_error(layer, e) the error to add (live errors only);
    store[layer] receives the features."""
    layers = sorted(layers)
    features, unedited, inputs = {}, {}, {}
    hooks = []
    for l in layers:

        def read(x, hook, l=l):
            if l == layers[0]:
                features.clear()  # a new pass
                unedited.clear()
            inputs[l] = x
            unedited[l] = tc.encode(l, x)
            features[l] = edit(l, unedited[l]) if edit is not None else unedited[l]
            if store is not None:
                store[l] = features[l]
            return x

        def write(x, hook, l=l):
            out = tc.write(l, features, inputs[l]).to(x.dtype)
            if isinstance(errors, str):
                own = out if edit is None else tc.write(l, unedited, inputs[l]).to(x.dtype)
                error = x - own
                out = out + (edit_error(l, error) if edit_error is not None else error)
            elif errors is not None:
                out = out + errors[l].to(x.dtype)
            return out

        hooks += [(tc.hooks_in[l], read), (tc.hooks_out[l], write)]
    return hooks
