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
from lib.core.metrics import data_metric, normalized
from lib.core.patching import ablate_mask, as_sources, receiver_groups, source_hooks
from lib.core.post_norm import SCALE_HOOK, norm_eps, norm_gain


def _norm(x: torch.Tensor, gain: torch.Tensor | None, eps: float) -> torch.Tensor:
    """The post-attention RMSNorm (identity on a model without one, where the definitions coincide)."""
    x = x.float()
    return x if gain is None else x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain


def _gains(model) -> tuple[list, list]:
    if "ln1_post" not in model.arch.post_norms:
        return [None] * model.n_layers, [0.0] * model.n_layers
    blocks = model.bridge.blocks
    return [norm_gain(b.ln1_post).to(model.device) for b in blocks], [norm_eps(b.ln1_post) for b in blocks]


def _recording(graph: Graph, gains: list) -> tuple[list, dict, dict]:
    """Forward hooks recording each source chunk's outputs {first row: [s, B, P, D]} and per layer the heads'
    results before the norm {layer: [B, P, H, D]} (a head's share times the layer's scale over the gain; the share
    itself on a model without the norm)."""
    outs, scales, results = {}, {}, {}

    def scale(layer):
        return lambda x, hook: scales.__setitem__(layer, x)

    def save(name, rows):
        def hook(x, hook):
            outs[rows.start] = as_sources(x)
            if "attn.hook_result" in name:
                layer = int(name.split(".")[1])
                gain = gains[layer]
                results[layer] = x.float() if gain is None else x.float() * scales[layer][:, :, None] / gain
            return x

        return hook

    hooks = [(SCALE_HOOK.format(layer=l), scale(l)) for l in range(graph.n_layers) if gains[l] is not None]
    hooks += [(n, save(n, rows)) for n, rows in source_hooks(graph)]
    return hooks, outs, results


def recomputed_norm_logits(model, graph: Graph, batch, keep: torch.Tensor) -> torch.Tensor:
    """Answer logits [B, V] with the edges outside `keep` ablated (resample) by EAP-IG's definition above."""
    ablate = ablate_mask(graph, keep).to(model.device)
    gains, eps = _gains(model)
    hooks, abl, abl_res = _recording(graph, gains)
    with torch.no_grad():
        model.bridge.run_with_hooks(batch.corrupt.to(model.device), fwd_hooks=hooks)
    abl_out = torch.cat([abl[k] for k in sorted(abl)])  # [S, B, P, D]
    head_rows = {
        l: slice(graph.head_source(l, 0), graph.head_source(l, 0) + graph.n_heads) for l in range(graph.n_layers)
    }
    hooks, outs, results = _recording(graph, gains)

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

    hooks += [(name, patch(cols, n)) for name, cols, n in receiver_groups(graph)]
    return logits_at(model, batch.clean.to(model.device), batch.answer_pos, hooks)


def recomputed_norm_circuit_logits(model, graph: Graph, data, keep: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per-prompt answer logits [N, V] of the circuit `keep` under the recomputed-norm definition."""
    out = []
    for start in range(0, len(data), batch_size):
        batch = data.subset(slice(start, start + batch_size))
        out.append(recomputed_norm_logits(model, graph, batch, keep).float())
    return torch.cat(out)


def faithfulness_gap(model, graph: Graph, data, keep: torch.Tensor, batch_size: int, clean, corrupt, circuit) -> dict:
    """Normalized faithfulness (ratio of means) of the circuit `keep` by this project's edge definition and by
    EAP-IG's recomputed post-attention norms, and their difference (resample ablation): run.json's post_norm_gap in
    02 and 05. clean, corrupt, circuit: the per-prompt metrics [N] the caller already has (circuit: ours)."""
    recomputed = data_metric(recomputed_norm_circuit_logits(model, graph, data, keep, batch_size), data).cpu().numpy()
    ours = normalized(circuit, clean, corrupt)["faithfulness"]
    theirs = normalized(recomputed, clean, corrupt)["faithfulness"]
    return {"faithfulness": ours, "faithfulness_recomputed_norms": theirs, "gap": theirs - ours}
