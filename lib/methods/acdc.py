"""ACDC (Conmy et al. 2023): visit receivers from the logits backwards, try removing each incoming edge
(replacing it by its ablation), keep it removed if the metric worsens by at most tau, compounding.

Receivers are visited in reverse topological order, so every edge removed so far ends at a receiver in
the same or a later layer: the model below the current receiver's layer is always the clean model.
Each trial therefore recomputes only the blocks from that layer on, starting from the cached clean
residual stream, with hooks registered once for the whole run and a mask edited in place. Blocks that need
position embeddings from the model (rotary) cannot start mid-model; there every trial is a full forward pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lib.core.choices import ACDC_METRICS as METRICS  # noqa: F401 (re-exported)
from lib.core.forward import unembed_at
from lib.core.graph import Graph
from lib.core.metrics import data_metric, kl_divergence
from lib.core.patching import EdgePatch, ablation_values, add_ablated, as_sources, source_hooks
from lib.core.recompute import run_blocks


@dataclass
class ACDCState:
    """Everything needed to resume: removed edges, the next trial, the running metric, counters."""

    tau: float
    removed: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(
        default_factory=dict
    )  # every tried edge -> how much its removal worsened the metric
    next_trial: int = 0  # index into edge_order
    current: float | None = None
    tried: int = 0
    forward_passes: int = 0

    def save(self, path: Path) -> None:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ACDCState:
        return cls(**json.loads(Path(path).read_text()))


def edge_order(graph: Graph, candidates: torch.Tensor | None = None) -> list[tuple[int, int]]:
    """(source, receiver) trials: receivers from the logits backwards, later sources first (only the
    candidate edges, where given)."""
    receivers = [graph.logits_receiver]
    for l in reversed(range(graph.n_layers)):
        receivers.append(graph.mlp_receiver(l))
        for h in reversed(range(graph.n_heads)):
            receivers += [graph.qkv_receivers(l, k).start + h for k in "vkq"]
    keep = graph.edge_exists if candidates is None else graph.edge_exists & candidates.bool()
    return [(s, r) for r in receivers for s in reversed(range(graph.n_sources)) if keep[s, r]]


class PartialRunner:
    """Answer logits of the model with `ablate` edges patched, recomputing only blocks >= a start layer,
    for every batch of the data (clean caches and ablation values computed once)."""

    def __init__(self, model, graph: Graph, data, ablation: str, batch_size: int, fixed: torch.Tensor | None = None):
        """fixed: [S, R] bool edges ablated throughout (EAP-pruned ACDC); the cached stream is then that of the
        model with them ablated, so recomputing from a layer stays exact."""
        self.model, self.graph = model, graph
        self.full = not model.arch.starts_mid_model  # rotary blocks cannot be called on a cached stream
        self.ablate = torch.zeros(graph.n_sources, graph.n_receivers)  # edited in place by the search
        self.batches, self.values, self.resid, self.clean_deltas, self.clean_logits = [], [], [], [], []
        names = [f"blocks.{l}.hook_resid_pre" for l in range(graph.n_layers)]
        names += [f"blocks.{graph.n_layers - 1}.hook_resid_post"] + [n for n, _ in source_hooks(graph)]
        for start in range(0, len(data), batch_size):
            batch = data.subset(slice(start, start + batch_size)).to(model.device)
            values = ablation_values(model, graph, batch, ablation)  # [S, B, P, D]
            with torch.no_grad():
                logits, cache = model.bridge.run_with_cache(batch.clean, names_filter=lambda n: n in names)
                if fixed is not None and fixed.any():  # the stream with the fixed edges ablated (the logits
                    base = fixed.float().clone()  # receiver is patched by logits() itself)
                    base[:, graph.logits_receiver] = 0
                    with model.bridge.hooks(fwd_hooks=EdgePatch(graph, values, base.to(model.device)).hooks()):
                        _, cache = model.bridge.run_with_cache(batch.clean, names_filter=lambda n: n in names)
            rows = torch.arange(len(batch), device=model.device)
            self.batches.append(batch)
            self.values.append(values)
            self.clean_logits.append(logits[rows, batch.answer_pos])
            self.resid.append(
                [cache[f"blocks.{l}.hook_resid_pre"] for l in range(graph.n_layers)]
                + [cache[f"blocks.{graph.n_layers - 1}.hook_resid_post"]]
            )
            # what ablating an edge from each source chunk adds; fixed below the start layer
            self.clean_deltas.append([(r, values[r] - as_sources(cache[n])) for n, r in source_hooks(graph)])
        self.i = 0  # batch in flight
        self.deltas: list = []

    def hooks(self) -> list:
        """Registered once for the whole search; they read the mask and the batch in flight."""
        g = self.graph

        def save(rows):
            def hook(x, hook):
                self.deltas.append((rows, self.values[self.i][rows] - as_sources(x)))
                return x

            return hook

        def patch(cols):
            return lambda x, hook: add_ablated(x, cols, self.deltas, self.ablate)

        out = [(name, save(rows)) for name, rows in source_hooks(g)[1:]]  # input is never recomputed
        for l in range(g.n_layers):
            out += [(f"blocks.{l}.hook_{k}_input", patch(g.qkv_receivers(l, k))) for k in "qkv"]
            out.append((f"blocks.{l}.hook_mlp_in", patch(slice(g.mlp_receiver(l), g.mlp_receiver(l) + 1))))
        if self.full:
            out.append(
                (f"blocks.{g.n_layers - 1}.hook_resid_post", patch(slice(g.logits_receiver, g.logits_receiver + 1)))
            )
        return out

    def logits(self, i: int, start_layer: int) -> torch.Tensor:
        """[B, V] answer logits of batch i (hooks must be registered)."""
        g, bridge, batch = self.graph, self.model.bridge, self.batches[i]
        self.i = i
        start_layer = 0 if self.full else start_layer
        self.deltas = list(self.clean_deltas[i][: 1 + 2 * start_layer])  # input, (heads, mlp) per layer below
        if self.full:
            with torch.no_grad():
                logits = bridge(batch.clean)
            return logits[torch.arange(len(batch), device=logits.device), batch.answer_pos]
        with torch.no_grad():
            x = run_blocks(self.model, self.resid[i][start_layer], start_layer)
            x = add_ablated(x, slice(g.logits_receiver, g.logits_receiver + 1), self.deltas, self.ablate)
            return unembed_at(self.model, x, batch.answer_pos)


def score(metric: str, clean_logits, logits, batch) -> float:
    """Sum over the batch of KL(clean || circuit) or of the task metric."""
    if metric == "kl":
        return kl_divergence(clean_logits, logits).sum().item()
    return data_metric(logits, batch).sum().item()


def worsening(metric: str, new: float, current: float, absolute: bool) -> float:
    change = new - current if metric == "kl" else current - new  # KL up, task metric down = worse
    return abs(new - current) if absolute else change


def run_acdc(
    model,
    graph: Graph,
    data,
    tau: float,
    metric: str = "kl",
    ablation: str = "resample",
    absolute: bool = False,
    batch_size: int = 64,
    state: ACDCState | None = None,
    checkpoint=None,
    progress=None,
    candidates: torch.Tensor | None = None,
    critical: Callable[[], AbstractContextManager] = nullcontext,
) -> ACDCState:
    """Run (or resume from `state`) ACDC at threshold tau on data; returns the final state. With candidates
    ([S, R] bool, e.g. EAP's top edges) only those are tried; every other edge is removed from the start.
    critical() wraps each update of the state (the caller's signal deferral, so a trial is recorded whole)."""
    if metric not in METRICS:
        raise ValueError(f"unknown ACDC metric {metric!r}; choose from {METRICS}")
    fixed = None if candidates is None else graph.edge_exists & ~candidates.bool()
    state = state or ACDCState(tau)
    if fixed is not None:  # the pruned edges are removed from the start (a resumed state has them already)
        have = set(state.removed)
        state.removed[:0] = [e for e in graph.edges_of(fixed) if e not in have]
    n_pruned = 0 if fixed is None else int(fixed.sum())
    runner = PartialRunner(model, graph, data, ablation, batch_size, fixed)
    for e in state.removed:
        runner.ablate[graph.edge_index(e)] = 1.0
    order = edge_order(graph, candidates)

    def evaluate(start_layer: int) -> float:
        total = sum(
            score(metric, runner.clean_logits[i], runner.logits(i, start_layer), b)
            for i, b in enumerate(runner.batches)
        )
        return total / len(data)

    with model.bridge.hooks(fwd_hooks=runner.hooks()):
        if state.current is None:
            current = evaluate(graph.n_layers)  # nothing tried yet (0 for KL unless edges were pruned)
            with critical():
                state.current, state.forward_passes = current, state.forward_passes + len(runner.batches)
        if progress is not None:
            progress.update(state.next_trial)
        for i in range(state.next_trial, len(order)):
            s, r = order[i]
            runner.ablate[s, r] = 1.0
            new = evaluate(graph.receiver_layer(r))
            worse = worsening(metric, new, state.current, absolute)
            name = f"{graph.sources[s]}->{graph.receivers[r]}"
            with critical():  # a trial is recorded whole or not at all (then it is redone on resume)
                state.tried += 1
                state.forward_passes += len(runner.batches)
                state.scores[name] = worse
                if worse <= tau:
                    state.current = new
                    state.removed.append(name)
                else:
                    runner.ablate[s, r] = 0.0
                state.next_trial = i + 1
                if progress is not None:
                    removed = len(state.removed) - n_pruned  # of the edges tried
                    progress.set_postfix(kept=state.next_trial - removed, removed=removed, passes=state.forward_passes)
                    progress.update(1)
                if checkpoint is not None:
                    checkpoint(state)
    return state


def kept_mask(graph: Graph, state: ACDCState) -> torch.Tensor:
    return graph.edge_exists & ~graph.mask_of(state.removed)
