"""Edge effects between feature-circuit nodes of adjacent sites (Marks et al. 2024, section 2: the effect of an
upstream node u on the metric through a downstream node d along the direct path, every other site's activation
held fixed):

    effect(u -> d) = sum over positions of  (d metric / d a_d) . (d a_d / d a_u) . (a_u' - a_u),

with d metric / d a_d the all-folded gradient of node effects (lib.features.effects.folded_gradients), the
Jacobian taken with the intermediate sites' outputs detached (stopped), and a_u' the patch. One backward pass per
downstream node reaches every upstream node of every prompt at once. Edge set (residual-routed, DEFINITIONS.md, Features and
the issue): resid(l-1) (embed for l = 0) -> attn(l), mlp(l), resid(l); attn(l) -> mlp(l), resid(l);
mlp(l) -> resid(l); no attn(l) -> mlp(l) on parallel blocks. A transcoder tc(l) stands where mlp(l) does.
Effects are summed over positions and averaged over prompts (`--aggregate sum`)."""

from __future__ import annotations

import torch

from lib.core.forward import stop_before_unembedding
from lib.features.effects import effects_of, writing


def site_layer(site: str) -> tuple[str, int]:
    """'resid3' -> ('resid', 3); 'embed' -> ('embed', -1)."""
    kind = site.rstrip("0123456789")
    return kind, int(site[len(kind) :]) if site != "embed" else -1


def upstream_of(site: str, present: set, parallel: bool = False) -> list[str]:
    """The sites with an edge into site (among those present)."""
    kind, layer = site_layer(site)
    if kind == "embed":
        return []
    previous = "embed" if layer == 0 else f"resid{layer - 1}"
    mlp = [s for s in (f"mlp{layer}", f"tc{layer}") if s in present]
    candidates = {
        "attn": [previous],
        "mlp": [previous] + ([] if parallel else [f"attn{layer}"]),
        "resid": [previous, f"attn{layer}"] + mlp,
    }
    candidates["tc"] = candidates["mlp"]
    return [s for s in candidates.get(kind, []) if s in present]


def edge_effects(
    model,
    dictionaries: dict,
    data,
    downstream: dict,
    upstream_nodes: dict,
    clean: dict,
    patched: dict,
    grads: dict,
    parallel: bool = False,
) -> list[dict]:
    """Rows {downstream, upstream, effect} (mean over prompts of the position-summed effect) for each downstream
    node in `downstream` ({site: (feature indices, include error)}) and each upstream node of its upstream sites
    kept in `upstream_nodes` ({site: (feature mask [d_sae] bool, error kept)}). clean/patched: node states;
    grads: folded gradients."""
    from lib.features.splice import at_output
    from lib.features.splice import site as site_of

    by_site = {site_of(d): d for d in dictionaries.values()}
    tokens = data.clean.to(model.device)
    real = data.real.to(model.device)
    rows = []
    for d_site, (d_features, d_error) in downstream.items():
        sources = upstream_of(d_site, set(by_site), parallel)
        if not sources:
            continue
        targets = [("feature", i) for i in d_features] + ([("error", -1)] if d_error else [])
        for what, i in targets:
            leaves, hooks, captured = {}, [], {}
            target = by_site[d_site]
            for s, dd in by_site.items():
                if s in sources:  # the upstream sites: their nodes as leaves
                    leaves[s] = (
                        clean[s]["features"].clone().requires_grad_(True),
                        clean[s]["error"].clone().requires_grad_(True),
                    )
                    hooks.append((dd.hook_name_out, writing(dd, *leaves[s])))
                elif s != d_site and dd.hook_name_out not in (target.hook_name, target.hook_name_out):
                    hooks.append((dd.hook_name_out, _stopped))  # held at its value: no gradient through it

            def capture(source, x, captured=captured):
                captured["x"], captured["out"] = source, x
                return x

            hooks += at_output(target, capture)
            with torch.enable_grad():
                model.bridge.run_with_hooks(tokens, fwd_hooks=[*hooks, stop_before_unembedding()])
                x = captured["x"]
                if what == "feature":
                    value = target.encode(x)[..., i] * grads[d_site][0][..., i]  # [N, P]
                else:
                    out = captured["out"]
                    error = out - target.decode(target.encode(x)).to(out.dtype)
                    value = (error * grads[d_site][1]).sum(-1)
                (value * real).sum().backward()
            name_d = f"{d_site}/f{i}" if what == "feature" else f"{d_site}/err"
            for s, (f, e) in leaves.items():
                keep_f, keep_e = upstream_nodes.get(s, (None, False))
                through = effects_of(f.grad, e.grad, clean[s], patched[s], real)  # per prompt and position
                if keep_f is not None:
                    per_feature = (
                        through["features"].sum(1).mean(0)
                    )  # [d_sae]: summed over positions, mean over prompts
                    for j in torch.nonzero(keep_f).flatten().tolist():
                        rows.append({"downstream": name_d, "upstream": f"{s}/f{j}", "effect": float(per_feature[j])})
                if keep_e:
                    rows.append(
                        {"downstream": name_d, "upstream": f"{s}/err", "effect": float(through["error"].sum(1).mean(0))}
                    )
    return rows


def _stopped(x, hook):
    return x.detach()
