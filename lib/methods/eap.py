"""Edge attribution patching (Syed, Rager & Conmy 2023) and EAP-IG (Hanna et al. 2024).

score(u -> r) = sum_{positions, width} (out_u(corrupted) - out_u(clean)) * d metric / d input_r,
averaged over prompts: the first-order estimate of metric(edge ablated) - metric(clean).
EAP takes the gradient on the clean run; EAP-IG averages it over `ig_steps` points on the straight
line from the corrupted to the clean input embeddings (alpha = k / steps, k = 1..steps), so 1 step = EAP.
Per batch: one corrupted forward, then per step one forward and one backward (the alpha = 1 step also
records the clean outputs); every edge at once, no per-edge passes.
"""

from __future__ import annotations

import torch

from lib.core.graph import Graph
from lib.core.metrics import data_metric
from lib.core.patching import as_sources, receiver_hooks, source_hooks, source_outputs

METHODS = ("eap", "eap-ig")


def edge_scores(model, graph: Graph, data, batch_size: int = 32, method: str = "eap", ig_steps: int = 5,
                progress=None, per_prompt: bool = False):
    """Attribution score of every edge, [S, R] float64 (0 where no edge), mean over the items of data; with
    per_prompt also each item's own scores, [N, S, R] float32 (their mean is the first result)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    steps = 1 if method == "eap" else ig_steps
    alphas = [1.0] + [k / steps for k in range(1, steps)]  # alpha = 1 first: it records the clean outputs
    scores = torch.zeros(graph.n_sources, graph.n_receivers, dtype=torch.float64, device=model.device)
    items = torch.zeros(len(data), graph.n_sources, graph.n_receivers, device=model.device) if per_prompt else None
    for start in range(0, len(data), batch_size):
        batch = data.subset(slice(start, start + batch_size)).to(model.device)
        corrupt = source_outputs(model, graph, batch.corrupt)  # [S, B, P, D]
        delta = torch.empty_like(corrupt)  # corrupted - clean, filled during the alpha = 1 pass
        rows = items[start:start + len(batch)] if per_prompt else None
        for alpha in alphas:
            _accumulate(model, graph, batch, corrupt, delta, alpha, record_clean=alpha == 1.0,
                        scores=scores, weight=1.0 / (steps * len(data)), items=rows, item_weight=1.0 / steps)
        if progress is not None:
            progress.update(len(batch))
    mean = (scores * graph.edge_exists.to(scores.device)).cpu()
    return (mean, (items * graph.edge_exists.to(items.device)).cpu()) if per_prompt else mean


def _accumulate(model, graph, batch, corrupt, delta, alpha, record_clean, scores, weight, items=None,
                item_weight=1.0):
    embed_corrupt = corrupt[0]  # [B, P, D]

    def input_hook(x, hook):
        if alpha != 1.0:
            x = embed_corrupt + alpha * (x - embed_corrupt)
        return x.detach().requires_grad_(True)

    def record(rows):
        def hook(x, hook):
            delta[rows] = corrupt[rows] - as_sources(x.detach())
            return x
        return hook

    def grad_hook(cols, n_sources):
        def hook(grad, hook):
            g = grad if grad.dim() == 4 else grad.unsqueeze(2)  # [B, P, h, D]
            h = g.shape[2]
            # one matrix product [s, B*P*D] @ [B*P*D, h] in the model's dtype (torch.einsum's layout choice
            # here is ~6x slower on CPU); the small [s, h] result accumulates in float64
            if items is not None:  # per item: [B, s, P*D] @ [B, P*D, h]
                b = g.shape[0]
                items[:, :n_sources, cols] += item_weight * torch.bmm(
                    delta[:n_sources].reshape(n_sources, b, -1).transpose(0, 1),
                    g.to(delta.dtype).permute(0, 1, 3, 2).reshape(b, -1, h)).float()
            g = g.to(delta.dtype).permute(0, 1, 3, 2).reshape(-1, h)
            scores[:n_sources, cols] += weight * (delta[:n_sources].reshape(n_sources, -1) @ g).double()
        return hook

    fwd = [("blocks.0.hook_resid_pre", input_hook)]
    if record_clean:
        fwd += [(name, record(rows)) for name, rows in source_hooks(graph)]
    bwd = []
    for l in range(graph.n_layers):
        for kind in "qkv":
            bwd.append((f"blocks.{l}.hook_{kind}_input", grad_hook(graph.qkv_receivers(l, kind),
                                                                     graph.sources_before_attn(l))))
        bwd.append((f"blocks.{l}.hook_mlp_in", grad_hook(slice(graph.mlp_receiver(l), graph.mlp_receiver(l) + 1),
                                                          graph.sources_before_mlp(l))))
    bwd.append((f"blocks.{graph.n_layers - 1}.hook_resid_post",
                grad_hook(slice(graph.logits_receiver, graph.logits_receiver + 1), graph.n_sources)))
    assert len(bwd) == len(receiver_hooks(graph))
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    from lib.core.model import stop_before_unembedding, unembed_at

    with torch.enable_grad(), model.bridge.hooks(fwd_hooks=fwd + [stop_before_unembedding()], bwd_hooks=bwd):
        try:
            resid = model.bridge(batch.clean)  # the bridge returns the stopped pass's output: [B, P, D]
        except StopAtLayerException as stop:
            resid = stop.layer_output
        data_metric(unembed_at(model, resid, batch.answer_pos), batch).sum().backward()
