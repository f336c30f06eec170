"""Edge interventions (DEFINITIONS.md, Patching an edge): run the model with any set of edges replaced by their ablation.

input_r = sum_{u->r kept} out_u(this run) + sum_{u->r ablated} out_u(ablation)
        = (this run's input_r) + sum_u ablate[u, r] * (out_u(ablation) - out_u(this run))

Source outputs are recorded as the forward pass produces them (in source order, so at any receiver
exactly the sources that write before it are known), and each receiver group is patched by one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lib.core.choices import ABLATIONS  # noqa: F401 (re-exported)
from lib.core.forward import stop_before_unembedding
from lib.core.graph import Graph


def source_hooks(graph: Graph) -> list[tuple[str, slice]]:
    """(hook name, source rows) in forward order; head outputs are [B, P, H, D], others [B, P, D]."""
    out = [("blocks.0.hook_resid_pre", slice(0, 1))]
    for l in range(graph.n_layers):
        h0 = graph.head_source(l, 0)
        out.append((f"blocks.{l}.attn.hook_result", slice(h0, h0 + graph.n_heads)))
        out.append((f"blocks.{l}.hook_mlp_out", slice(graph.mlp_source(l), graph.mlp_source(l) + 1)))
    return out


def receiver_hooks(graph: Graph) -> list[tuple[str, int | slice]]:
    """(hook name, receiver columns) in forward order."""
    out = []
    for l in range(graph.n_layers):
        for kind in "qkv":
            out.append((f"blocks.{l}.hook_{kind}_input", graph.qkv_receivers(l, kind)))
        out.append((f"blocks.{l}.hook_mlp_in", graph.mlp_receiver(l)))
    out.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", graph.logits_receiver))
    return out


def receiver_columns(graph: Graph) -> list[tuple[str, range]]:
    """receiver_hooks with each hook's columns as a range (one column for mlp_in and the logits)."""
    return [
        (name, range(c.start, c.stop) if isinstance(c, slice) else range(c, c + 1)) for name, c in receiver_hooks(graph)
    ]


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
        model.bridge.run_with_hooks(
            tokens, fwd_hooks=[(name, save) for name, _ in source_hooks(graph)] + [stop_before_unembedding()]
        )
    return torch.cat(chunks)


def mean_outputs(model, graph: Graph, reference, batch_size: int = 32) -> torch.Tensor:
    """Every source's output averaged over the corrupted prompts of `reference`, per position, [S, P, D]
    (positions past a prompt's end do not count)."""
    total: torch.Tensor | None = None
    count = torch.zeros(0)
    for start in range(0, len(reference), batch_size):
        batch = reference.subset(slice(start, start + batch_size))
        outs = source_outputs(model, graph, batch.corrupt.to(model.device))  # [S, B, P', D]
        valid = batch.real.to(outs.device)  # [B, P']
        s = torch.einsum("sbpd,bp->spd", outs, valid.to(outs.dtype))
        c = valid.sum(0)
        P = reference.clean.shape[1]
        s = torch.nn.functional.pad(s, (0, 0, 0, P - s.shape[1]))
        c = torch.nn.functional.pad(c, (0, P - c.shape[0]))
        total, count = (s, c) if total is None else (total + s, count + c)
    if total is None:
        raise ValueError("mean_outputs needs at least one prompt")
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


def add_ablated(
    x: torch.Tensor, cols: slice, chunks: list, ablate: torch.Tensor, active: torch.Tensor | None = None
) -> torch.Tensor:
    """x (a receiver group's input, [B, P, h, D] or [B, P, D]) plus sum_u ablate[u, r] * delta_u over the
    recorded source chunks (rows, delta [s, B, P, D]); chunks with no ablated edge here (per `active`, a CPU
    bool matrix, default ablate != 0) are skipped."""
    add = None
    for rows, delta in chunks:
        if not (active if active is not None else ablate)[rows, cols].any():
            continue
        w = ablate[rows, cols].to(delta.device, delta.dtype)  # [s, h]
        term = (w.T @ delta.reshape(len(delta), -1)).view(-1, *delta.shape[1:]).permute(1, 2, 0, 3)  # [B, P, h, D]
        add = term if add is None else add + term
    return x if add is None else x + (add if x.dim() == 4 else add[:, :, 0])


def receiver_groups(graph: Graph):
    """(hook name, receiver columns as a slice, number of sources written before it reads) in forward order."""
    for name, cols in receiver_hooks(graph):
        cols = cols if isinstance(cols, slice) else slice(cols, cols + 1)
        layer = int(name.split(".")[1])
        n_before = (
            graph.n_sources
            if cols.start == graph.logits_receiver
            else graph.sources_before_mlp(layer)
            if "mlp" in name
            else graph.sources_before_attn(layer)
        )
        yield name, cols, n_before


@dataclass
class _Group:
    """How one receiver group is patched: x (+ running total of deltas) + weight @ delta[rows]."""

    cols: slice
    rows: torch.Tensor | slice  # source rows taking part
    weight: torch.Tensor  # [h, k]: ablate (ablated side) or ablate - 1 (kept side)
    complement: bool  # kept side: the running total of every delta so far is added too


def _plan_group(ablate: torch.Tensor, a_cpu: torch.Tensor, n_before: int, cols: slice, mode: str) -> _Group:
    """Patch from whichever side has fewer source rows: the ablated edges, or the kept ones plus the total."""
    a = a_cpu[:n_before, cols]
    ablated, kept = (a != 0).any(1), (a != 1).any(1)
    complement = mode == "kept" or (mode == "auto" and int(kept.sum()) + 1 < int(ablated.sum()))
    use = kept if complement else ablated
    w = ablate[:n_before, cols] - (1.0 if complement else 0.0)  # [n_before, h]
    idx = use.nonzero().flatten()
    if len(idx) > n_before // 2:  # dense enough: a slice of the buffer, zero weights where unused
        return _Group(cols, slice(0, n_before), (w * use[:, None].to(w)).T.contiguous(), complement)
    return _Group(cols, idx.to(ablate.device), w[idx.to(ablate.device)].T.contiguous(), complement)


@dataclass
class EdgePatch:
    """Forward hooks that ablate the edges marked in `ablate` ([S, R], 1 = replaced by the ablation).

    Deltas (ablation - this run's output) go into one [S, B, P, D] buffer as sources write; each receiver
    group is then patched by one matrix product over the source rows that take part, from whichever side
    has fewer: the ablated edges, or the kept ones subtracted from the running total of all deltas.
    A differentiable mask takes the ablated side over per-chunk deltas (no in-place buffer). `mode`
    (auto | ablated | kept) forces a side, for tests."""

    graph: Graph
    ablation: torch.Tensor  # [S, B, P, D]
    ablate: torch.Tensor  # [S, R] float (may require grad)
    mode: str = "auto"
    positions: torch.Tensor | None = None  # [B, P] bool: patch only there (elsewhere every edge is kept)

    def hooks(self) -> list:
        if self.ablate.requires_grad:
            return self._grad_hooks()
        ablate = self.ablate.to(self.ablation.device, self.ablation.dtype)
        a_cpu = self.ablate.detach().cpu()
        delta = torch.empty_like(self.ablation)  # [S, B, P, D]
        total = torch.zeros_like(self.ablation[0])  # running sum of the deltas recorded so far, [B, P, D]
        # the running total holds every source recorded so far: in a parallel block that includes the
        # heads of the MLP's own layer, which it does not read, so its MLP is patched from the ablated side
        groups = [
            (
                name,
                _plan_group(ablate, a_cpu, n, cols, "ablated" if self.graph.parallel and "mlp" in name else self.mode),
            )
            for name, cols, n in receiver_groups(self.graph)
        ]
        running = any(gp.complement for _, gp in groups)

        where = None if self.positions is None else self.positions.to(delta.device, delta.dtype)[None, :, :, None]

        def save(rows: slice):
            def hook(x, hook):
                torch.sub(self.ablation[rows], as_sources(x), out=delta[rows])
                if where is not None:
                    delta[rows] *= where
                if running:
                    total.add_(delta[rows].sum(0))
                return x

            return hook

        def patch(gp: _Group):
            def hook(x, hook):
                k = gp.weight.shape[1]
                if k == 0 and not gp.complement:
                    return x
                B, P, D = delta.shape[1:]
                out = x + (total[:, :, None] if x.dim() == 4 else total) if gp.complement else x.clone()
                if k:
                    d = delta[gp.rows].reshape(k, -1)  # [k, B*P*D]
                    add = (gp.weight @ d).view(-1, B, P, D)  # [h, B, P, D]
                    out += add.permute(1, 2, 0, 3) if x.dim() == 4 else add[0]
                return out

            return hook

        return [(name, save(rows)) for name, rows in source_hooks(self.graph)] + [
            (name, patch(gp)) for name, gp in groups
        ]

    def _grad_hooks(self) -> list:
        if self.positions is not None:
            raise NotImplementedError("position-restricted patching has no differentiable mask")
        chunks: list[tuple[slice, torch.Tensor]] = []
        ablate = self.ablate.to(self.ablation.dtype)

        def save(rows: slice):
            def hook(x, hook):
                chunks.append((rows, self.ablation[rows] - as_sources(x)))
                return x

            return hook

        hooks = [(name, save(rows)) for name, rows in source_hooks(self.graph)]
        for name, cols, _ in receiver_groups(self.graph):
            hooks.append(
                (name, lambda x, hook, cols=cols: add_ablated(x, cols, chunks, ablate, self.graph.edge_exists))
            )
        return hooks


def ablate_mask(graph: Graph, keep: torch.Tensor) -> torch.Tensor:
    """The ablate matrix [S, R] of a circuit given as its kept-edge mask."""
    return (graph.edge_exists & ~keep.bool()).float()


def masked_answer_logits(
    model,
    graph: Graph,
    batch,
    ablation: torch.Tensor,
    ablate: torch.Tensor,
    grad: bool = False,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits [B, V] at the answer positions with the edges in `ablate` patched (one forward pass), at every
    position or only where `positions` ([B, P] bool) is true."""
    from lib.core.forward import logits_at

    hooks = EdgePatch(graph, ablation, ablate.to(model.device), positions=positions).hooks()
    return logits_at(model, batch.clean.to(model.device), batch.answer_pos, hooks, grad=grad)


CACHE_BYTES = 2 << 30  # ablation values kept across circuits while they fit (resample: [S, N, P, D] in all)


class AblationCache:
    """What ablated edges carry for each batch of one dataset (ablation_values), computed once and reused by
    every circuit evaluated on it: resample's corrupted forward per batch, mean's reference means. Batches are
    kept while the whole set fits max_bytes; past that each call computes them again (the same numbers)."""

    def __init__(self, model, graph: Graph, data, kind: str, batch_size: int, reference=None, max_bytes=CACHE_BYTES):
        self.model, self.graph, self.data, self.kind, self.reference = model, graph, data, kind, reference
        self.batch_size, self._mean, self._values = batch_size, None, {}
        size = graph.n_sources * len(data) * data.clean.shape[1] * model.d_model * torch.finfo(model.dtype).bits // 8
        self.keep = kind == "resample" and size <= max_bytes  # mean and zero values are views: nothing to keep

    def values(self, start: int, batch) -> torch.Tensor:
        if start in self._values:
            return self._values[start]
        if self.kind == "mean" and self._mean is None:
            ref = self.reference if self.reference is not None else self.data
            self._mean = mean_outputs(self.model, self.graph, ref, self.batch_size)
        values = ablation_values(self.model, self.graph, batch, self.kind, self._mean)
        if self.keep:
            self._values[start] = values
        return values


def evaluate_mask(
    model,
    graph: Graph,
    data,
    keep: torch.Tensor,
    ablation: str = "resample",
    batch_size: int = 32,
    reference=None,
    progress=None,
    positions: torch.Tensor | None = None,
    cache: AblationCache | None = None,
) -> torch.Tensor:
    """Logits [N, V] at the answer positions of every item with only the edges in `keep` intact (at the
    positions marked in `positions` [N, P] only, if given). Mean ablation averages over the corrupted prompts
    of `reference` (default: data itself). cache: an AblationCache of this data, ablation and batch size."""
    ablate = ablate_mask(graph, keep)
    cache = cache or AblationCache(model, graph, data, ablation, batch_size, reference, max_bytes=0)
    out = []
    for start in range(0, len(data), batch_size):
        batch = data.subset(slice(start, start + batch_size))
        values = cache.values(start, batch)
        where = None if positions is None else positions[start : start + batch_size, : batch.clean.shape[1]]
        out.append(masked_answer_logits(model, graph, batch, values, ablate, positions=where).float())
        if progress is not None:
            progress.update(len(batch))
    return torch.cat(out)


def masks_metric(
    model,
    graph: Graph,
    data,
    keeps: list[torch.Tensor],
    ablation: str = "resample",
    batch_size: int = 32,
    rows_per_pass: int | None = None,
    reference=None,
    cache: AblationCache | None = None,
) -> torch.Tensor:
    """The task metric [C, N] of many circuits (kept-edge masks) at once: each forward pass carries several
    circuits, every prompt of the batch once per circuit, each row patched with its own circuit's mask."""
    from lib.core.forward import logits_at
    from lib.core.metrics import data_metric

    ablates = torch.stack([ablate_mask(graph, k) for k in keeps]).to(model.device)  # [C, S, R]
    cache = cache or AblationCache(model, graph, data, ablation, batch_size, reference, max_bytes=0)
    out = torch.empty(len(keeps), len(data), dtype=torch.float64)
    for start in range(0, len(data), batch_size):
        batch = data.subset(slice(start, start + batch_size))
        B = len(batch)
        values = cache.values(start, batch)  # [S, B, P, D]
        per_pass = max(1, (rows_per_pass or model.rows_per_pass) // B)
        for c0 in range(0, len(keeps), per_pass):
            k = min(per_pass, len(keeps) - c0)
            rep = batch.subset(torch.arange(B).repeat(k))  # circuit-major rows: circuit j has rows j*B..j*B+B-1
            weights = ablates[c0 : c0 + k].repeat_interleave(B, dim=0).to(values.dtype)  # [kB, S, R]
            hooks = _row_mask_hooks(graph, values.repeat(1, k, 1, 1), weights)
            logits = logits_at(model, rep.clean.to(model.device), rep.answer_pos, hooks)
            out[c0 : c0 + k, start : start + B] = data_metric(logits.float(), rep).view(k, B).cpu()
    return out


def _row_mask_hooks(graph: Graph, ablation: torch.Tensor, weights: torch.Tensor) -> list:
    """Hooks patching every row b with its own ablate matrix weights[b] ([rows, S, R]); ablation [S, rows, P, D]."""
    delta = torch.empty_like(ablation)

    def save(rows: slice):
        def hook(x, hook):
            torch.sub(ablation[rows], as_sources(x), out=delta[rows])
            return x

        return hook

    def patch(cols: slice, n_before: int):
        def hook(x, hook):
            add = torch.einsum("bsh,sbpd->bphd", weights[:, :n_before, cols], delta[:n_before])
            return x + (add if x.dim() == 4 else add[:, :, 0])

        return hook

    hooks = [(name, save(rows)) for name, rows in source_hooks(graph)]
    for name, cols, n_before in receiver_groups(graph):
        hooks.append((name, patch(cols, n_before)))
    return hooks
