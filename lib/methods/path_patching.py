"""Path patching (Wang et al. 2022, appendix B): the effect of a sender's changed output on the metric only
through a set of receivers. The sender's output is taken from the other prompt (noise: corrupted into the
clean run; denoise: clean into the corrupted run); the base run is the other one.

- direct: only the residual edges sender -> receivers carry the change (the edge engine with those edges
  ablated); every other node reads the sender's base output.
- through-mlps: the receivers also read the change as carried by the MLPs between sender and receiver, with
  every other head frozen to its base output (Wang et al.'s definition: paths through MLPs count as direct).

Receivers read additively (DEFINITIONS.md, Patching an edge): the change reaches a receiver's input, and what that receiver then
computes flows on freely. Several senders share a forward pass, each in its own block of rows, and the pass
recomputes only from the first layer it changes (lib.core.recompute).
"""

from __future__ import annotations

import torch

from lib.core.choices import PATH_DIRECTIONS as DIRECTIONS  # noqa: F401 (re-exported)
from lib.core.choices import PATHS
from lib.core.graph import Graph
from lib.core.metrics import data_metric
from lib.core.patching import receiver_groups, source_hooks, source_outputs
from lib.core.recompute import Restart


def _mlp_changes(
    graph: Graph, restart: Restart, pos: torch.Tensor, outs: torch.Tensor, other: torch.Tensor, senders: list[int]
) -> torch.Tensor:
    """[M, L, B, P, D]: each MLP's output change when sender m's output is the other prompt's and every other
    head is frozen to its base output (MLPs recompute)."""
    M, B = len(senders), outs.shape[1]
    L = graph.n_layers
    changes = torch.zeros(M, L, *outs.shape[1:], device=outs.device, dtype=outs.dtype)

    def freeze(rows: slice):
        def hook(x, hook):
            x = x.clone()
            if x.dim() == 4:  # heads: every row block frozen to the base outputs
                x[:] = outs[rows].permute(1, 2, 0, 3).repeat(M, 1, 1, 1)
            for m, s in enumerate(senders):
                if rows.start <= s < rows.stop:
                    block = slice(m * B, (m + 1) * B)
                    if x.dim() == 4:
                        x[block, :, s - rows.start] = other[s]
                    else:
                        x[block] = other[s]
            return x

        return hook

    def record(layer: int):
        def hook(x, hook):
            changes[:, layer] = x.view(M, B, *x.shape[1:]) - outs[graph.mlp_source(layer)]
            return x

        return hook

    # before the earliest sender every node reads its base output: MLP changes there are zero, and the pass
    # starts at the sender's layer
    start, hooks = min(graph.source_layer(s) for s in senders), []
    for name, rows in source_hooks(graph)[1:]:
        layer = graph.source_layer(rows.start)
        if layer >= start:
            hooks.append((name, freeze(rows)))
            if "mlp" in name:
                hooks.append((name, record(layer)))
    restart.answer_logits(start, pos.repeat(M), hooks, copies=M)
    for m, s in enumerate(senders):  # an MLP sender's own change is the sender's, not a path through it
        if s == graph.mlp_source(graph.source_layer(s)):
            changes[m, graph.source_layer(s)] = 0
    return changes


class PathPatcher:
    """Path patching of one batch in one direction: the base and other runs' source outputs are computed once,
    and the MLP changes of each chunk of senders once for all receiver sets."""

    def __init__(self, model, graph: Graph, batch, direction: str):
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}")
        self.model, self.graph, self.batch = model, graph, batch
        base, other = (batch.clean, batch.corrupt) if direction == "noise" else (batch.corrupt, batch.clean)
        self.base = base.to(model.device)
        self.restart = Restart(model, self.base, graph)
        assert self.restart.outs is not None  # a Restart with a graph keeps the source outputs
        self.outs: torch.Tensor = self.restart.outs  # [S, B, P, D]
        self.other = source_outputs(model, graph, other.to(model.device))
        self._mlp: dict[tuple, torch.Tensor] = {}

    def mlp_changes(self, senders: list[int]) -> torch.Tensor:
        key = tuple(senders)
        if key not in self._mlp:
            self._mlp = {
                key: _mlp_changes(
                    self.graph,
                    self.restart,
                    self.batch.answer_pos.to(self.model.device),
                    self.outs,
                    self.other,
                    senders,
                )
            }
        return self._mlp[key]

    def metrics(self, senders: list[int], receivers: torch.Tensor, path: str) -> torch.Tensor:
        """Task metric [len(senders), B] with each sender (source row) patched along its paths to the receiver
        columns marked in `receivers` ([R] bool), all senders in one forward pass (rows sender-major)."""
        if path not in PATHS:
            raise ValueError(f"unknown path {path!r}")
        graph, outs, M, B = self.graph, self.outs, len(senders), self.base.shape[0]
        idx = torch.as_tensor(senders, device=outs.device)
        sender_delta = self.other[idx] - outs[idx]  # [M, B, P, D]
        mlp = self.mlp_changes(senders) if path == "through-mlps" else None  # [M, L, B, P, D]
        rcv = receivers.bool().cpu()
        sender_rows = torch.as_tensor(senders)
        mlp_rows = torch.tensor([graph.mlp_source(l) for l in range(graph.n_layers)])

        def patch(direct: torch.Tensor, via: torch.Tensor):
            def hook(x, hook):
                add = torch.einsum("mh,mbpd->mbphd", direct, sender_delta)
                if mlp is not None:
                    add = add + torch.einsum("mlh,mlbpd->mbphd", via, mlp)
                add = add.reshape(M * B, *add.shape[2:])  # [M*B, P, h, D]
                return x + (add if x.dim() == 4 else add[:, :, 0])

            return hook

        hooks, start = [], graph.n_layers
        for name, cols, n_before in receiver_groups(graph):
            on = rcv[cols]  # [h]
            direct = (graph.edge_exists[sender_rows][:, cols] & on).to(outs)  # [M, h]: the edge sender -> receiver
            # [M, L, h]: MLP l lies between sender m and the receiver (writes after the sender, before the receiver)
            via = (((mlp_rows[None, :] > sender_rows[:, None]) & (mlp_rows[None, :] < n_before))[:, :, None] & on).to(
                outs
            )
            if not direct.any() and (mlp is None or not via.any()):
                continue  # no sender reaches these receivers: nothing to add
            hooks.append((name, patch(direct, via)))
            start = min(start, graph.receiver_layer(cols.start))
        rep = self.batch.subset(torch.arange(B).repeat(M))
        logits = self.restart.answer_logits(start, rep.answer_pos.to(self.model.device), hooks, copies=M)
        return data_metric(logits, rep).view(M, B).cpu()
