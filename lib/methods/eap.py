"""Edge attribution patching (Syed, Rager & Conmy 2023) and its integrated-gradient variants (Hanna et al. 2024).

score(u -> r) = sum_{positions, width} (out_u(corrupted) - out_u(clean)) * d metric / d input_r,
averaged over prompts (and over the gradient points): the first-order estimate of metric(edge ablated) -
metric(clean). Where the gradient is taken:
- eap: the clean run;
- eap-ig: points on the straight line from the corrupted to the clean input embeddings, alpha = k / steps;
- eap-ig-activations: the same line for one node group's output at a time (the input, each layer's heads,
  each MLP), everything else computed from the clean prompt; averaged over groups and points;
- clean-corrupted: the clean and the corrupted run, averaged.
`ig_points` picks alpha: right (k = 1..steps, ending at the clean point; 1 step = EAP) or left (k = 0..steps-1,
starting at the corrupted point, as the EAP-IG library does). Every edge at once, no per-edge passes.
"""

from __future__ import annotations

import torch

from lib.core.choices import EAP_METHODS as METHODS  # noqa: F401 (re-exported)
from lib.core.choices import IG_POINTS, IG_STEPS
from lib.core.graph import Graph
from lib.core.metrics import data_metric
from lib.core.patching import as_sources, receiver_hooks, source_hooks, source_outputs


def gradient_points(graph: Graph, method: str, steps: int, ig_points: str = "right") -> list[tuple[int, float]]:
    """(source chunk index into source_hooks, alpha) of every gradient point: that chunk's output is set to
    corrupted + alpha * (clean - corrupted); chunk 0 is the input embedding."""
    if method not in METHODS or ig_points not in IG_POINTS:
        raise ValueError(f"unknown method {method!r} or ig_points {ig_points!r}")
    ks = range(1, steps + 1) if ig_points == "right" else range(0, steps)
    if method == "eap":
        return [(0, 1.0)]
    if method == "clean-corrupted":
        return [(0, 1.0), (0, 0.0)]
    groups = [0] if method == "eap-ig" else range(len(source_hooks(graph)))
    return [(g, k / steps) for g in groups for k in ks]


def edge_scores(
    model,
    graph: Graph,
    data,
    batch_size: int = 32,
    method: str = "eap",
    ig_steps: int = IG_STEPS,
    progress=None,
    ig_points: str = "right",
) -> torch.Tensor:
    """Attribution score of every edge, [S, R] float64 (0 where no edge), mean over the items of data."""
    return _edge_scores(model, graph, data, batch_size, method, ig_steps, progress, False, ig_points)[0]


def edge_scores_per_prompt(
    model,
    graph: Graph,
    data,
    batch_size: int = 32,
    method: str = "eap",
    ig_steps: int = IG_STEPS,
    progress=None,
    ig_points: str = "right",
) -> tuple[torch.Tensor, torch.Tensor]:
    """edge_scores' mean [S, R] float64 and each item's own scores [N, S, R] float32 (their mean is the first)."""
    mean, items = _edge_scores(model, graph, data, batch_size, method, ig_steps, progress, True, ig_points)
    assert items is not None
    return mean, items


def _edge_scores(model, graph, data, batch_size, method, ig_steps, progress, per_prompt, ig_points):
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    points = gradient_points(graph, method, ig_steps, ig_points)
    scores = torch.zeros(graph.n_sources, graph.n_receivers, dtype=torch.float64, device=model.device)
    items = torch.zeros(len(data), graph.n_sources, graph.n_receivers, device=model.device) if per_prompt else None
    for start in range(0, len(data), batch_size):
        batch = data.subset(slice(start, start + batch_size)).to(model.device)
        corrupt = source_outputs(model, graph, batch.corrupt)  # [S, B, P, D]
        rows = items[start : start + len(batch)] if items is not None else None
        weight, item_weight = 1.0 / (len(points) * len(data)), 1.0 / len(points)
        if (0, 1.0) in points:  # the clean point first: its pass records the clean outputs (delta)
            delta = torch.empty_like(corrupt)
            order = [(0, 1.0)] + [p for p in points if p != (0, 1.0)]
        else:
            delta = corrupt - source_outputs(model, graph, batch.clean)
            order = points
        for point in order:
            record = point == (0, 1.0)
            _accumulate(model, graph, batch, corrupt, delta, point, record, scores, weight, rows, item_weight)
        if progress is not None:
            progress.update(len(batch))
    mean = (scores * graph.edge_exists.to(scores.device)).cpu()
    return mean, (items * graph.edge_exists.to(items.device)).cpu() if items is not None else None


def _accumulate(model, graph, batch, corrupt, delta, point, record_clean, scores, weight, items=None, item_weight=1.0):
    chunk, alpha = point
    name, chunk_rows = source_hooks(graph)[chunk]

    def interpolate(x, hook):  # the chunk's output on the line from corrupted (0) to clean (1), a leaf; x is
        value = corrupt[chunk_rows] + alpha * (as_sources(x.detach()) - corrupt[chunk_rows])  # its clean output
        value = value.permute(1, 2, 0, 3) if x.dim() == 4 else value[0]
        return value.contiguous().requires_grad_(True)

    def input_hook(x, hook):  # gradients need a leaf: the clean input, when another chunk is interpolated
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
                items[:, :n_sources, cols] += (
                    item_weight
                    * torch.bmm(
                        delta[:n_sources].reshape(n_sources, b, -1).transpose(0, 1),
                        g.to(delta.dtype).permute(0, 1, 3, 2).reshape(b, -1, h),
                    ).float()
                )
            g = g.to(delta.dtype).permute(0, 1, 3, 2).reshape(-1, h)
            scores[:n_sources, cols] += weight * (delta[:n_sources].reshape(n_sources, -1) @ g).double()

        return hook

    fwd = [] if chunk == 0 else [("blocks.0.hook_resid_pre", input_hook)]
    if record_clean:
        fwd += [(n, record(rows)) for n, rows in source_hooks(graph)]
    fwd.append((name, interpolate))
    bwd = []
    for l in range(graph.n_layers):
        for kind in "qkv":
            bwd.append(
                (f"blocks.{l}.hook_{kind}_input", grad_hook(graph.qkv_receivers(l, kind), graph.sources_before_attn(l)))
            )
        bwd.append(
            (
                f"blocks.{l}.hook_mlp_in",
                grad_hook(slice(graph.mlp_receiver(l), graph.mlp_receiver(l) + 1), graph.sources_before_mlp(l)),
            )
        )
    bwd.append(
        (
            f"blocks.{graph.n_layers - 1}.hook_resid_post",
            grad_hook(slice(graph.logits_receiver, graph.logits_receiver + 1), graph.n_sources),
        )
    )
    assert len(bwd) == len(receiver_hooks(graph))
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    from lib.core.forward import stop_before_unembedding, unembed_at

    with torch.enable_grad(), model.bridge.hooks(fwd_hooks=fwd + [stop_before_unembedding()], bwd_hooks=bwd):
        try:
            resid = model.bridge(batch.clean)  # the bridge returns the stopped pass's output: [B, P, D]
        except StopAtLayerException as stop:
            resid = stop.layer_output
        data_metric(unembed_at(model, resid, batch.answer_pos), batch).sum().backward()
