"""Canonical circuits of tasks/ (DEFINITIONS.md, Tasks) turned into edge sets of a graph."""

from __future__ import annotations

import torch

from lib.core.errors import UserError
from lib.core.graph import Graph


def _head(spec: str) -> tuple[int, int]:
    layer, head = spec.split(".")
    return int(layer), int(head)


def _fits(graph: Graph, heads) -> bool:
    return all(l < graph.n_layers and h < graph.n_heads for l, h in heads)


def ioi_circuit(graph: Graph, canonical: dict) -> torch.Tensor:
    """Wang et al.'s 26 heads with ACDC's edge rules; MLPs are part of the input and output paths:
    every MLP takes the place of `input` in the rules that start at input, MLPs feed later MLPs and the
    logits, and the heads that feed the logits also feed the MLPs after them."""
    classes = {k: [_head(s) for s in v] for k, v in canonical["classes"].items()}
    if not _fits(graph, [h for hs in classes.values() for h in hs]):
        raise UserError(
            f"the canonical IOI circuit names heads a {graph.n_layers}-layer, {graph.n_heads}-head model does not have"
        )
    keep = torch.zeros(graph.n_sources, graph.n_receivers, dtype=torch.bool)
    mlps = [graph.mlp_source(l) for l in range(graph.n_layers)]

    def sources(cls):
        if cls == "input":
            return [0] + (mlps if canonical.get("mlps_on_paths") else [])
        return [graph.head_source(l, h) for l, h in classes[cls]]

    for src_cls, rcv_cls, kinds in canonical["edge_rules"]:
        for s in sources(src_cls):
            if rcv_cls == "logits":
                keep[s, graph.logits_receiver] = True
                if canonical.get("mlps_on_paths"):
                    keep[s, [graph.mlp_receiver(l) for l in range(graph.n_layers)]] = True
                continue
            for l, h in classes[rcv_cls]:
                for kind in kinds:
                    keep[s, graph.qkv_receivers(l, kind).start + h] = True
    if canonical.get("mlps_on_paths"):
        for l in range(graph.n_layers):
            keep[[0] + mlps, graph.mlp_receiver(l)] = True
        keep[mlps, graph.logits_receiver] = True
    return keep & graph.edge_exists


def group_circuit(graph: Graph, canonical: dict) -> torch.Tensor:
    """Greater-than (Hanna et al.): node groups input -> early -> mid -> late -> logits, every edge between
    consecutive groups, into every input (q, k, v) of the receiving heads."""
    keep = torch.zeros(graph.n_sources, graph.n_receivers, dtype=torch.bool)
    groups = canonical["groups"]
    for node in [n for g in groups for n in g if n not in ("input", "logits")]:
        if node not in graph.source_index:
            raise UserError(
                f"the canonical circuit names {node}, which a {graph.n_layers}-layer, "
                f"{graph.n_heads}-head model does not have"
            )
    for senders, receivers in zip(groups, groups[1:]):
        for u in senders:
            s = graph.source_index[u]
            for v in receivers:
                if v == "logits":
                    cols = [graph.logits_receiver]
                elif v.startswith("m"):
                    cols = [graph.mlp_receiver(int(v[1:]))]
                else:
                    l, h = (int(x) for x in v[1:].split(".h"))
                    cols = [graph.qkv_receivers(l, k).start + h for k in "qkv"]
                keep[s, cols] = True
    return keep & graph.edge_exists


def canonical_circuit(task: str, graph: Graph, model_name: str) -> torch.Tensor | None:
    """The published circuit for this task as a kept-edge mask, or None where none is published for
    this model (only GPT-2 small's shape: gpt2 itself, or gpt2-random for testing the code path)."""
    from tasks import TASKS

    canonical = TASKS[task].canonical
    if (
        canonical is None
        or graph.parallel
        or not (graph.n_layers == 12 and graph.n_heads == 12 and model_name.startswith("gpt2"))
    ):
        return None
    return ioi_circuit(graph, canonical) if "edge_rules" in canonical else group_circuit(graph, canonical)
