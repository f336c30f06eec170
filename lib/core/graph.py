"""The computational graph (DEFINITIONS.md, The graph): sources x receivers as dense tensors, edge names."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from lib.core.errors import UserError


@dataclass(frozen=True)
class Graph:
    """Nodes, receivers and edges of an L-layer, H-head transformer.

    Sources (rows), in forward order: input, then per layer a{l}.h0..a{l}.h{H-1}, m{l}.
    Receivers (columns): per layer a{l}.h{h}<q> (all h), <k>, <v>, then m{l}; finally logits.
    In a parallel block (GPT-NeoX, GPT-J) the MLP reads the block's input, so it has no edges from its own
    layer's heads.
    """

    n_layers: int
    n_heads: int
    parallel: bool = False

    @cached_property
    def sources(self) -> list[str]:
        out = ["input"]
        for l in range(self.n_layers):
            out += [f"a{l}.h{h}" for h in range(self.n_heads)] + [f"m{l}"]
        return out

    @cached_property
    def receivers(self) -> list[str]:
        out = []
        for l in range(self.n_layers):
            for kind in "qkv":
                out += [f"a{l}.h{h}<{kind}>" for h in range(self.n_heads)]
            out.append(f"m{l}")
        return out + ["logits"]

    @cached_property
    def nodes(self) -> list[str]:
        return self.sources + ["logits"]

    @property
    def n_sources(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_receivers(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1

    def head_source(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_source(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def qkv_receivers(self, layer: int, kind: str) -> slice:
        """Receiver columns of layer's heads for q, k or v (a slice of length H)."""
        start = layer * (3 * self.n_heads + 1) + "qkv".index(kind) * self.n_heads
        return slice(start, start + self.n_heads)

    def mlp_receiver(self, layer: int) -> int:
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    @property
    def logits_receiver(self) -> int:
        return self.n_receivers - 1

    def receiver_layer(self, r: int) -> int:
        """The layer whose block reads receiver column r (n_layers for the logits)."""
        return self.n_layers if r == self.logits_receiver else r // (3 * self.n_heads + 1)

    def source_layer(self, s: int) -> int:
        """The layer whose block writes source row s (0 for the input)."""
        return 0 if s == 0 else (s - 1) // (self.n_heads + 1)

    def sources_before_attn(self, layer: int) -> int:
        """Number of sources (a prefix of the rows) that write before layer's attention reads."""
        return 1 + layer * (self.n_heads + 1)

    def sources_before_mlp(self, layer: int) -> int:
        return self.sources_before_attn(layer) + (0 if self.parallel else self.n_heads)

    def node_receivers(self, node: str) -> list[int]:
        """Receiver columns through which node reads the residual stream (none for input)."""
        if node == "logits":
            return [self.logits_receiver]
        if node.startswith("a"):
            return [self.receiver_index[f"{node}<{k}>"] for k in "qkv"]
        return [self.receiver_index[node]] if node.startswith("m") else []

    @cached_property
    def edge_exists(self) -> torch.Tensor:
        """[S, R] bool: u -> r exists when u writes to the residual stream before r reads it."""
        m = torch.zeros(self.n_sources, self.n_receivers, dtype=torch.bool)
        for l in range(self.n_layers):
            for kind in "qkv":
                m[: self.sources_before_attn(l), self.qkv_receivers(l, kind)] = True
            m[: self.sources_before_mlp(l), self.mlp_receiver(l)] = True
        m[:, self.logits_receiver] = True
        return m

    @cached_property
    def own_receivers(self) -> torch.Tensor:
        """[S, R] bool: the receivers through which each source node reads (a head: q, k, v; an MLP: its input)."""
        m = torch.zeros(self.n_sources, self.n_receivers, dtype=torch.bool)
        for l in range(self.n_layers):
            for h in range(self.n_heads):
                for kind in "qkv":
                    m[self.head_source(l, h), self.qkv_receivers(l, kind).start + h] = True
            m[self.mlp_source(l), self.mlp_receiver(l)] = True
        return m

    @property
    def n_edges(self) -> int:
        return int(self.edge_exists.sum())

    @cached_property
    def source_index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.sources)}

    @cached_property
    def receiver_index(self) -> dict[str, int]:
        return {r: i for i, r in enumerate(self.receivers)}

    @cached_property
    def edge_names(self) -> list[str]:
        """All edge names "{src}->{receiver}", in row-major (source, receiver) order of edge_exists."""
        s_idx, r_idx = self.edge_exists.nonzero(as_tuple=True)
        return [f"{self.sources[s]}->{self.receivers[r]}" for s, r in zip(s_idx.tolist(), r_idx.tolist())]

    def edge_index(self, name: str) -> tuple[int, int]:
        try:
            src, rcv = name.split("->")
            s, r = self.source_index[src], self.receiver_index[rcv]
        except (ValueError, KeyError):
            raise UserError(f"edge {name!r} does not exist in a {self.describe()} model") from None
        if not self.edge_exists[s, r]:
            raise UserError(f"edge {name!r} does not exist: {src} does not write before {rcv} reads")
        return s, r

    def describe(self) -> str:
        return f"{self.n_layers}-layer, {self.n_heads}-head{', parallel-block' if self.parallel else ''}"

    def mask_of(self, edges) -> torch.Tensor:
        """[S, R] bool mask of a collection of edge names."""
        m = torch.zeros(self.n_sources, self.n_receivers, dtype=torch.bool)
        for e in edges:
            m[self.edge_index(e)] = True
        return m

    def edges_of(self, mask: torch.Tensor) -> list[str]:
        s_idx, r_idx = (mask.bool() & self.edge_exists).nonzero(as_tuple=True)
        return [f"{self.sources[s]}->{self.receivers[r]}" for s, r in zip(s_idx.tolist(), r_idx.tolist())]

    def nodes_of(self, mask: torch.Tensor) -> list[str]:
        """Nodes on some edge of the mask (receivers named by their node), in graph order."""
        on = set()
        for e in self.edges_of(mask):
            src, rcv = e.split("->")
            on |= {src, rcv.split("<")[0]}
        return [n for n in self.nodes if n in on]


def layer_head(node: str) -> tuple[int, int]:
    """'a3.h1' -> (3, 1); 'm2' -> (2, -1); 'input', 'embed', 'logits' -> (-1, -1)."""
    if node.startswith("a") and ".h" in node:
        layer, head = node[1:].split(".h")
        return int(layer), int(head)
    return (int(node[1:]), -1) if node.startswith("m") and node[1:].isdigit() else (-1, -1)


def graph_of(model) -> Graph:
    return Graph(model.n_layers, model.n_heads, model.arch.parallel)
