"""Edge interventions (DESIGN §4): run the model with any set of edges replaced by their ablation.

input_r = sum_{u->r kept} out_u(this run) + sum_{u->r ablated} out_u(ablation)
        = (this run's input_r) + sum_u ablate[u, r] * (out_u(ablation) - out_u(this run))

Source outputs are recorded as the forward pass produces them (in source order, so at any receiver
exactly the sources that write before it are known), and each receiver group is patched by one einsum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lib.graph import Graph

ABLATIONS = ("resample", "mean", "zero")


def source_hooks(graph: Graph) -> list[tuple[str, slice]]:
    """(hook name, source rows) in forward order; head outputs are [B, P, H, D], others [B, P, D]."""
    out = [("blocks.0.hook_resid_pre", slice(0, 1))]
    for l in range(graph.n_layers):
        h0 = graph.head_source(l, 0)
        out.append((f"blocks.{l}.attn.hook_result", slice(h0, h0 + graph.n_heads)))
        out.append((f"blocks.{l}.hook_mlp_out", slice(graph.mlp_source(l), graph.mlp_source(l) + 1)))
    return out


def receiver_hooks(graph: Graph) -> list[tuple[str, list[int] | slice]]:
    """(hook name, receiver columns) in forward order."""
    out = []
    for l in range(graph.n_layers):
        for kind in "qkv":
            out.append((f"blocks.{l}.hook_{kind}_input", graph.qkv_receivers(l, kind)))
        out.append((f"blocks.{l}.hook_mlp_in", graph.mlp_receiver(l)))
    out.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", graph.logits_receiver))
    return out


def as_sources(x: torch.Tensor) -> torch.Tensor:
    """A source hook's value as [n_sources_here, B, P, D]."""
    return x.permute(2, 0, 1, 3) if x.dim() == 4 else x.unsqueeze(0)


def source_outputs(model, graph: Graph, tokens: torch.Tensor) -> torch.Tensor:
    """Every source's output on tokens, [S, B, P, D] (no grad)."""
    chunks = []

    def save(x, hook):
        chunks.append(as_sources(x.detach()))
        return x

    with torch.no_grad():
        model.bridge.run_with_hooks(tokens, fwd_hooks=[(name, save) for name, _ in source_hooks(graph)])
    return torch.cat(chunks)


def mean_outputs(model, graph: Graph, reference, batch_size: int = 32) -> torch.Tensor:
    """Every source's output averaged over the corrupted prompts of `reference`, per position, [S, P, D]
    (positions past a prompt's end do not count)."""
    total, count = None, None
    for start in range(0, len(reference), batch_size):
        batch = reference.subset(slice(start, start + batch_size))
        outs = source_outputs(model, graph, batch.corrupt.to(model.device))  # [S, B, P', D]
        valid = (torch.arange(outs.shape[2], device=outs.device)[None] < batch.lengths.to(outs.device)[:, None])
        s = torch.einsum("sbpd,bp->spd", outs, valid.to(outs.dtype))
        c = valid.sum(0)
        P = reference.clean.shape[1]
        s = torch.nn.functional.pad(s, (0, 0, 0, P - s.shape[1]))
        c = torch.nn.functional.pad(c, (0, P - c.shape[0]))
        total, count = (s, c) if total is None else (total + s, count + c)
    return total / count.clamp_min(1)[None, :, None]


def ablation_values(model, graph: Graph, batch, kind: str, mean: torch.Tensor | None = None) -> torch.Tensor:
    """What ablated edges carry, [S, B, P, D]: resample (the paired corrupted prompt's outputs), mean
    (`mean` from mean_outputs over a reference set; the batch itself if not given), or zero."""
    P = batch.clean.shape[1]
    if kind == "resample":
        return source_outputs(model, graph, batch.corrupt.to(model.device))
    if kind == "mean":
        mean = mean_outputs(model, graph, batch) if mean is None else mean
        if mean.shape[1] < P:  # reference prompts shorter than this batch: repeat the last position
            mean = torch.cat([mean, mean[:, -1:].expand(-1, P - mean.shape[1], -1)], dim=1)
        return mean[:, None, :P].expand(-1, len(batch), -1, -1)
    if kind == "zero":
        return torch.zeros(graph.n_sources, len(batch), P, model.d_model, device=model.device, dtype=model.dtype)
    raise ValueError(f"unknown ablation {kind!r}; choose from {ABLATIONS}")


def add_ablated(x: torch.Tensor, cols: slice, chunks: list, ablate: torch.Tensor,
                active: torch.Tensor | None = None) -> torch.Tensor:
    """x (a receiver group's input, [B, P, h, D] or [B, P, D]) plus sum_u ablate[u, r] * delta_u over the
    recorded source chunks (rows, delta [s, B, P, D]); chunks with no ablated edge here (per `active`, a CPU
    bool matrix, default ablate != 0) are skipped."""
    add = None
    for rows, delta in chunks:
        if not (active if active is not None else ablate)[rows, cols].any():
            continue
        term = torch.einsum("sh,sbpd->bphd", ablate[rows, cols].to(delta.device, delta.dtype), delta)
        add = term if add is None else add + term
    return x if add is None else x + (add if x.dim() == 4 else add[:, :, 0])


def add_complement(x: torch.Tensor, cols: slice, chunks: list, ablate: torch.Tensor, total: torch.Tensor,
                   kept: torch.Tensor) -> torch.Tensor:
    """The same as add_ablated, computed from the other side: x + sum_u delta_u - sum_u (1 - ablate[u, r])
    delta_u, where total = sum_u delta_u over the recorded chunks ([B, P, D]); cheaper when few edges are
    kept. Chunks with no kept edge here (per `kept`, a CPU bool matrix) are skipped."""
    sub = None
    for rows, delta in chunks:
        if not kept[rows, cols].any():
            continue
        term = torch.einsum("sh,sbpd->bphd", (1 - ablate[rows, cols]).to(delta.device, delta.dtype), delta)
        sub = term if sub is None else sub + term
    add = total[:, :, None] if x.dim() == 4 else total
    if sub is not None:
        add = add - (sub if x.dim() == 4 else sub[:, :, 0])
    return x + add


@dataclass
class EdgePatch:
    """Forward hooks that ablate the edges marked in `ablate` ([S, R], 1 = replaced by the ablation).

    Each receiver group is patched from whichever side touches fewer source chunks: the ablated edges
    (add_ablated) or the kept ones (add_complement, from a running sum of all deltas); `mode` forces one."""

    graph: Graph
    ablation: torch.Tensor  # [S, B, P, D]
    ablate: torch.Tensor  # [S, R] float (may require grad)
    mode: str = "auto"  # auto | ablated | kept

    def _use_complement(self, a: torch.Tensor, n_before: int, cols: slice) -> bool:
        if self.ablate.requires_grad or self.mode == "ablated":
            return False
        if self.mode == "kept":
            return True
        n_ablated = int((a[:n_before, cols] != 0).any(1).sum())
        n_kept = int((a[:n_before, cols] != 1).any(1).sum())
        return n_kept + 1 < n_ablated

    def hooks(self) -> list:
        g = self.graph
        chunks: list[tuple[slice, torch.Tensor]] = []  # per source chunk: (rows, ablation - this run's output)
        ablate = self.ablate.to(self.ablation.dtype)
        a = self.ablate.detach().cpu()
        # which (receiver group, chunk) pairs carry any ablated (kept) edge, decided once on the CPU;
        # with a differentiable mask every edge takes part
        active = g.edge_exists if self.ablate.requires_grad else a != 0
        kept = a != 1
        groups = []  # (hook name, cols, sources before it) in forward order
        for name, cols in receiver_hooks(g):
            cols = cols if isinstance(cols, slice) else slice(cols, cols + 1)
            layer = int(name.split(".")[1])
            n_before = (g.n_sources if cols.start == g.logits_receiver else
                        g.sources_before_mlp(layer) if "mlp" in name else g.sources_before_attn(layer))
            groups.append((name, cols, self._use_complement(a, n_before, cols)))
        running = any(c for _, _, c in groups)
        total: list[torch.Tensor] = []  # running sum of every delta so far, [B, P, D]

        def save(rows: slice):
            def hook(x, hook):
                delta = self.ablation[rows] - as_sources(x)
                chunks.append((rows, delta))
                if running:
                    total.append(delta.sum(0) if not total else total.pop() + delta.sum(0))
                return x
            return hook

        def patch(cols, complement):
            if complement:
                return lambda x, hook: add_complement(x, cols, chunks, ablate, total[-1], kept)
            return lambda x, hook: add_ablated(x, cols, chunks, ablate, active)

        src = source_hooks(g)
        hooks = [(name, save(rows)) for name, rows in src]
        hooks += [(name, patch(cols, complement)) for name, cols, complement in groups]
        return hooks


def ablate_mask(graph: Graph, keep: torch.Tensor) -> torch.Tensor:
    """The ablate matrix [S, R] of a circuit given as its kept-edge mask."""
    return (graph.edge_exists & ~keep.bool()).float()


def masked_answer_logits(model, graph: Graph, batch, ablation: torch.Tensor, ablate: torch.Tensor,
                         grad: bool = False) -> torch.Tensor:
    """Logits [B, V] at the answer positions with the edges in `ablate` patched (one forward pass)."""
    tokens = batch.clean.to(model.device)
    hooks = EdgePatch(graph, ablation, ablate.to(model.device)).hooks()
    with torch.set_grad_enabled(grad):
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    rows = torch.arange(len(tokens), device=tokens.device)
    return logits[rows, batch.answer_pos.to(model.device)]


def evaluate_mask(model, graph: Graph, data, keep: torch.Tensor, ablation: str = "resample",
                  batch_size: int = 32, reference=None, progress=None) -> torch.Tensor:
    """Logits [N, V] at the answer positions of every item with only the edges in `keep` intact.
    Mean ablation averages over the corrupted prompts of `reference` (default: data itself)."""
    ablate = ablate_mask(graph, keep)
    ref = reference if reference is not None else data
    mean = mean_outputs(model, graph, ref, batch_size) if ablation == "mean" else None
    out = []
    for start in range(0, len(data), batch_size):
        batch = data.subset(slice(start, start + batch_size))
        values = ablation_values(model, graph, batch, ablation, mean)
        out.append(masked_answer_logits(model, graph, batch, values, ablate).float())
        if progress is not None:
            progress.update(len(batch))
    return torch.cat(out)
