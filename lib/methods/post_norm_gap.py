"""What the head-share definition of edges on post-norm models (Gemma 2; lib.core.post_norm) changes against the
EAP-IG library's evaluate_graph (eap/evaluate.py, its use_normalization_before_and_after branch): there a
receiver sees, for each earlier layer, the post-attention norm recomputed on its own mixture of head results,

    norm_i( sum_h [ablated h->r ? result_h(ablation) : result_h(this run)] )

the real model's norm of what that receiver would receive, which is not additive over heads. Here a head's
output is its share at the scale of the run it comes from, so each ablated edge swaps one share for another
and the norm's scale stays that run's (frozen at the run's own activations). Both are exact when every edge
is kept (the clean run) or ablated (the corrupted run); between, they differ by this module's measurement.
A direct, unbatched reference (resample ablation only): one forward per batch, every receiver's mixture."""

from __future__ import annotations

import torch

from lib.core.forward import logits_at
from lib.core.graph import Graph
from lib.core.patching import ablate_mask, as_sources, receiver_groups, source_hooks
from lib.core.post_norm import SCALE_HOOK, _eps, _weight


def _norm(x: torch.Tensor, gain: torch.Tensor | None, eps: float) -> torch.Tensor:
    """The post-attention RMSNorm (identity on a model without one, where the definitions coincide)."""
    x = x.float()
    return x if gain is None else x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain


def _gains(model) -> tuple[list, list]:
    if "ln1_post" not in model.arch.post_norms:
        return [None] * model.n_layers, [0.0] * model.n_layers
    blocks = model.bridge.blocks
    return [_weight(b.ln1_post).to(model.device) for b in blocks], [_eps(b.ln1_post) for b in blocks]


def _result(x: torch.Tensor, scale, gain) -> torch.Tensor:
    """A head's result before the norm [B, P, H, D] from its share x (the share itself without a norm)."""
    return x.float() if gain is None else x.float() * scale[:, :, None] / gain


def _record(model, graph: Graph, tokens: torch.Tensor):
    """Source outputs [S, B, P, D] and per layer the heads' results before the norm [B, P, H, D]."""
    outs, scales, results = {}, {}, {}
    gains, _ = _gains(model)

    def save(name, rows):
        def hook(x, hook):
            outs[rows.start] = as_sources(x.detach())
            if "attn.hook_result" in name:
                layer = int(name.split(".")[1])
                results[layer] = _result(x.detach(), scales.get(layer), gains[layer])
            return x

        return hook

    def scale(layer):
        return lambda x, hook: scales.__setitem__(layer, x.detach())

    hooks = [(SCALE_HOOK.format(layer=l), scale(l)) for l in range(graph.n_layers) if gains[l] is not None]
    hooks += [(n, save(n, rows)) for n, rows in source_hooks(graph)]
    with torch.no_grad():
        model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    return torch.cat([outs[k] for k in sorted(outs)]), results


def recomputed_norm_logits(model, graph: Graph, batch, keep: torch.Tensor) -> torch.Tensor:
    """Answer logits [B, V] with the edges outside `keep` ablated (resample) by EAP-IG's definition above."""
    ablate = ablate_mask(graph, keep).to(model.device)
    abl_out, abl_res = _record(model, graph, batch.corrupt.to(model.device))
    gains, eps = _gains(model)
    head_rows = {
        l: slice(graph.head_source(l, 0), graph.head_source(l, 0) + graph.n_heads) for l in range(graph.n_layers)
    }
    outs, scales, results = {}, {}, {}

    def scale(layer):
        return lambda x, hook: scales.__setitem__(layer, x)

    def save(name, rows):
        def hook(x, hook):
            outs[rows.start] = as_sources(x)
            if "attn.hook_result" in name:
                layer = int(name.split(".")[1])
                results[layer] = _result(x, scales.get(layer), gains[layer])
            return x

        return hook

    def patch(cols: slice, n_before: int):
        def hook(x, hook):
            here = torch.cat([outs[k] for k in sorted(outs)])[:n_before]  # [n, B, P, D]
            a = ablate[:n_before, cols]  # [n, h]
            add = torch.zeros(x.shape[0], x.shape[1], a.shape[1], x.shape[-1], device=x.device)  # [B, P, h, D]
            is_head = torch.zeros(n_before, dtype=torch.bool, device=x.device)
            for l, rows in head_rows.items():
                if rows.stop > n_before:
                    continue
                is_head[rows] = True
                mine, theirs = results[l], abl_res[l]  # [B, P, H, D]
                mix = mine.sum(2)[:, :, None] + torch.einsum("bphd,hc->bpcd", theirs - mine, a[rows])
                add += _norm(mix, gains[l], eps[l]) - _norm(mine.sum(2), gains[l], eps[l])[:, :, None]
            other = (~is_head).float()[:, None] * a  # non-head sources swap outputs, as everywhere
            add += torch.einsum("nbpd,nc->bpcd", (abl_out[:n_before] - here).float(), other)
            return x + (add.to(x.dtype) if x.dim() == 4 else add[:, :, 0].to(x.dtype))

        return hook

    hooks = [(SCALE_HOOK.format(layer=l), scale(l)) for l in range(graph.n_layers) if gains[l] is not None]
    hooks += [(n, save(n, rows)) for n, rows in source_hooks(graph)]
    hooks += [(name, patch(cols, n)) for name, cols, n in receiver_groups(graph)]
    return logits_at(model, batch.clean.to(model.device), batch.answer_pos, hooks)


def circuit_gap(model, graph: Graph, data, keep: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per-prompt answer logits [N, V] of the circuit `keep` under the recomputed-norm definition."""
    out = []
    for start in range(0, len(data), batch_size):
        batch = data.subset(slice(start, start + batch_size))
        out.append(recomputed_norm_logits(model, graph, batch, keep).float())
    return torch.cat(out)


def faithfulness_gap(model, graph: Graph, data, keep: torch.Tensor, batch_size: int) -> dict:
    """Normalized faithfulness (ratio of means over data) of the circuit `keep` by this project's edge definition and
    by EAP-IG's recomputed post-attention norms, and their difference (resample ablation): run.json's
    post_norm_gap in 02 and 05."""
    from lib.core.forward import answer_logits
    from lib.core.metrics import data_metric
    from lib.core.patching import evaluate_mask

    def mean_metric(logits: torch.Tensor) -> float:
        return float(data_metric(logits, data).double().mean())

    clean = mean_metric(answer_logits(model, data.clean, data.answer_pos, batch_size))
    corrupt = mean_metric(answer_logits(model, data.corrupt, data.answer_pos, batch_size))
    ours = (mean_metric(evaluate_mask(model, graph, data, keep, "resample", batch_size)) - corrupt) / (clean - corrupt)
    theirs = (mean_metric(circuit_gap(model, graph, data, keep, batch_size)) - corrupt) / (clean - corrupt)
    return {"faithfulness": ours, "faithfulness_recomputed_norms": theirs, "gap": theirs - ours}
