"""Dictionaries spliced into the model's forward pass (DEFINITIONS.md, Features): at each site the activation is replaced by
the dictionary's reconstruction plus its error node, so the model is unchanged (to float rounding), or by the
reconstruction alone: the replacement model, whose faithfulness is measured, never assumed.

Sites: `embed` (blocks.0.hook_resid_pre), `attn{l}` (blocks.l.hook_attn_out), `mlp{l}` (blocks.l.hook_mlp_out),
`resid{l}` (blocks.l.hook_resid_post); a transcoder reading the MLP's input is `tc{l}`."""

from __future__ import annotations

import re

import torch

SITE_OF_HOOK = (
    (re.compile(r"blocks\.0\.hook_resid_pre"), "embed"),
    (re.compile(r"blocks\.(\d+)\.hook_attn_out"), "attn"),
    (re.compile(r"blocks\.(\d+)\.hook_mlp_out"), "mlp"),
    (re.compile(r"blocks\.(\d+)\.hook_resid_post"), "resid"),
)


def site(dictionary) -> str:
    """The site name of a dictionary (from the hook it writes; a transcoder's is tc{l}). blocks.l.hook_resid_pre
    (l >= 1, as SAELens's GPT-2 residual SAEs are trained) is the residual stream after layer l - 1: resid{l-1}."""
    pre = re.fullmatch(r"blocks\.(\d+)\.hook_resid_pre", dictionary.hook_name_out)
    if pre and int(pre.group(1)) > 0 and dictionary.kind == "sae":
        return f"resid{int(pre.group(1)) - 1}"
    for pattern, name in SITE_OF_HOOK:
        m = pattern.fullmatch(dictionary.hook_name_out)
        if m:
            if dictionary.kind == "transcoder":
                return f"tc{m.group(1)}" if m.groups() else "tc"
            return name + (m.group(1) if m.groups() else "")
    return dictionary.hook_name_out


def at_output(dictionary, replace) -> list[tuple]:
    """Forward hooks calling replace(source, x) at the dictionary's output hook, x its activation and source what
    the dictionary reads (a transcoder's input, captured at its own hook in the same pass; else x); what replace
    returns takes x's place."""
    inputs = {}

    def capture(x, hook):
        inputs["source"] = x
        return x

    def at_out(x, hook):
        return replace(inputs.pop("source") if dictionary.kind == "transcoder" else x, x)

    return ([(dictionary.hook_name, capture)] if dictionary.kind == "transcoder" else []) + [
        (dictionary.hook_name_out, at_out)
    ]


def splice_hooks(dictionaries: dict, with_error: bool = True, store: dict | None = None) -> list[tuple]:
    """Forward hooks replacing each dictionary's output activation by decode(encode(input)) (+ the error node,
    target - reconstruction, with with_error); store, if given, receives per site its features [B, P, d_sae]
    and error [B, P, d_out]."""
    hooks = []
    for d in dictionaries.values():

        def replace(source, x, _d=d):
            features = _d.encode(source)
            reconstruction = _d.reconstruct(features, source).to(x.dtype)
            error = x - reconstruction  # [B, P, d_out]: the error node
            if store is not None:
                store[site(_d)] = {"features": features, "error": error}
            return reconstruction + error if with_error else reconstruction

        hooks += at_output(d, replace)
    return hooks


def spliced_logits(model, tokens: torch.Tensor, dictionaries: dict, with_error: bool = True) -> torch.Tensor:
    """Logits [B, P, V] of the model with the dictionaries spliced in."""
    with torch.no_grad():
        return model.bridge.run_with_hooks(tokens.to(model.device), fwd_hooks=splice_hooks(dictionaries, with_error))
