"""Node effects of dictionary features and error nodes on the task metric, as Marks et al. (2024, "Sparse Feature
Circuits") compute them (saprmarks/feature-circuits, attribution.py):

- `attrib` (_pe_attrib_all_folded_sparseact): one clean pass with every dictionary spliced in with its error
  node, one backward pass of the metric; effect = (patch - clean) * d metric / d node, per feature, and for an
  error node the dot product over its d_out dimensions.
- `ig` (_pe_ig_sparseact): per site, the site's features and error interpolated from clean to patch at
  alpha = step / steps, step = 0 .. steps-1 (the other sites run as the model does), gradients averaged over
  the steps; effect = mean gradient * (patch - clean).

The patch is the corrupted prompt's features and errors (`corrupted`) or zero (`zero`). Effects are per prompt
and position: features [N, P, d_sae], errors [N, P]; positions past a prompt's length are 0."""

from __future__ import annotations

import torch

from lib.core.choices import FEATURE_METHODS as METHODS
from lib.core.choices import FEATURE_PATCHES as PATCHES
from lib.core.forward import stop_before_unembedding, unembed_at
from lib.core.metrics import data_metric


def node_states(model, dictionaries: dict, tokens: torch.Tensor) -> dict:
    """Per site {"features": [B, P, d_sae], "error": [B, P, d_out]} of a pass with every dictionary spliced in."""
    from lib.features.splice import splice_hooks

    store = {}
    with torch.no_grad():
        model.bridge.run_with_hooks(
            tokens, fwd_hooks=[*splice_hooks(dictionaries, store=store), stop_before_unembedding()]
        )
    return {site: {k: v.detach() for k, v in parts.items()} for site, parts in store.items()}


def patch_states(model, dictionaries: dict, data, patch: str, clean: dict) -> dict:
    """The node states a patch brings: the corrupted prompts' (`corrupted`), or zero (`zero`)."""
    if patch == "corrupted":
        return node_states(model, dictionaries, data.corrupt.to(model.device))
    return {s: {k: torch.zeros_like(v) for k, v in parts.items()} for s, parts in clean.items()}


def _metric(model, data, resid: torch.Tensor) -> torch.Tensor:
    return data_metric(unembed_at(model, resid, data.answer_pos.to(resid.device)), data)


def writing(site_dict, features: torch.Tensor, error: torch.Tensor):
    """A forward hook writing decode(features) + error at the site's output (a transcoder's output too)."""

    def hook(x, hook):
        return (site_dict.decode(features) + error).to(x.dtype)

    return hook


def _folded(site_dict, features: torch.Tensor, error: torch.Tensor):
    """The site's output as the model computes it (its value is x itself), with gradients reaching the clean
    features and error (leaves) through decode(features) + error and passing to x unchanged, as Marks et al.'s
    all-folded attribution sets them (x.grad = x_recon.grad: every site is the identity on the way back)."""

    def hook(x, hook):
        reconstruction = site_dict.decode(features).to(x.dtype)
        return x + (reconstruction - reconstruction.detach()) + (error.to(x.dtype) - error.detach().to(x.dtype))

    return hook


def folded_gradients(model, dictionaries: dict, data, clean: dict) -> dict:
    """{site: (d metric / d features [N, P, d_sae], d metric / d error [N, P, d_out])} at the clean point, every
    site spliced in and the identity on the way back (_folded): one forward and one backward pass."""
    from lib.features.splice import site as site_of

    leaves, hooks = {}, []
    for d in dictionaries.values():
        s = site_of(d)
        leaves[s] = (clean[s]["features"].clone().requires_grad_(True), clean[s]["error"].clone().requires_grad_(True))
        hooks.append((d.hook_name_out, _folded(d, *leaves[s])))
    with torch.enable_grad():
        resid = model.bridge.run_with_hooks(data.clean.to(model.device), fwd_hooks=[*hooks, stop_before_unembedding()])
        _metric(model, data, resid).sum().backward()
    return {s: (f.grad, e.grad) for s, (f, e) in leaves.items()}


def node_effects(
    model, dictionaries: dict, data, method: str = "attrib", patch: str = "corrupted", steps: int = 10
) -> dict:
    """{site: {"features": [N, P, d_sae], "error": [N, P]}} effects on the task metric of one batch (data)."""

    if method not in METHODS or patch not in PATCHES:
        raise ValueError(f"method {method!r} / patch {patch!r}: choose from {METHODS} / {PATCHES}")
    clean = node_states(model, dictionaries, data.clean.to(model.device))
    patched = patch_states(model, dictionaries, data, patch, clean)
    grads = (
        folded_gradients(model, dictionaries, data, clean)
        if method == "attrib"
        else ig_gradients(model, dictionaries, data, clean, patched, steps)
    )
    real = data.real.to(model.device)
    return {s: effects_of(grad_f, grad_e, clean[s], patched[s], real) for s, (grad_f, grad_e) in grads.items()}


def ig_gradients(model, dictionaries: dict, data, clean: dict, patched: dict, steps: int) -> dict:
    """{site: mean gradients (features, error)} along the straight line from clean to patch, one site at a time
    (the others as the model computes them), at alpha = step / steps, step = 0 .. steps - 1."""
    from lib.features.splice import site as site_of

    tokens = data.clean.to(model.device)
    out = {}
    for d in dictionaries.values():
        s = site_of(d)
        grads_f, grads_e = 0.0, 0.0
        for step in range(steps):
            alpha = step / steps
            f = ((1 - alpha) * clean[s]["features"] + alpha * patched[s]["features"]).requires_grad_(True)
            e = ((1 - alpha) * clean[s]["error"] + alpha * patched[s]["error"]).requires_grad_(True)
            with torch.enable_grad():
                resid = model.bridge.run_with_hooks(
                    tokens, fwd_hooks=[(d.hook_name_out, writing(d, f, e)), stop_before_unembedding()]
                )
                _metric(model, data, resid).sum().backward()
            grads_f, grads_e = grads_f + f.grad, grads_e + e.grad
        out[s] = (grads_f / steps, grads_e / steps)
    return out


def effects_of(grad_f, grad_e, clean: dict, patched: dict, real: torch.Tensor) -> dict:
    """(patch - clean) * grad: per feature, and per error node summed over its dimensions; 0 past the prompt."""
    features = (patched["features"] - clean["features"]) * grad_f * real[..., None]
    error = ((patched["error"] - clean["error"]) * grad_e).sum(-1) * real
    return {"features": features.detach(), "error": error.detach()}
