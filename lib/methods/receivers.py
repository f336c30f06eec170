"""Sender and receiver sets named on the command line (DEFINITIONS.md, The graph names, canonical groups, scans)."""

from __future__ import annotations

import re

import torch

from lib.core.errors import UserError
from lib.core.graph import Graph

SCAN = re.compile(r"all-heads<([qkv])>")
GROUP = re.compile(r"([a-z][a-z_-]*?)(?:<([qkv]+)>)?")


def canonical_classes(task: str, graph: Graph, model_name: str) -> dict[str, list[str]]:
    """The task's published head classes (IOI: name movers, S-inhibition, ...) as head names, where a canonical
    circuit is published for this model (else none)."""
    from lib.methods.canonical import canonical_circuit
    from tasks import TASKS

    canonical = TASKS[task].canonical or {}
    if "classes" not in canonical or canonical_circuit(task, graph, model_name) is None:
        return {}
    return {c: [f"a{h.split('.')[0]}.h{h.split('.')[1]}" for h in heads] for c, heads in canonical["classes"].items()}


def _class_of(name: str, classes: dict) -> str | None:
    key = name.lower().replace("-", "_")
    for candidate in (key, key.removesuffix("s")):
        if candidate in classes:
            return candidate
    return None


def parse_receivers(spec: str, graph: Graph, task: str, model_name: str) -> list[tuple[str, str, torch.Tensor]]:
    """(label, scan name or "", [R] bool mask) per receiver set; a scan gives one set per head."""
    out = []
    classes = canonical_classes(task, graph, model_name)
    for token in spec.split():
        mask = torch.zeros(graph.n_receivers, dtype=torch.bool)
        if m := SCAN.fullmatch(token):
            for l in range(graph.n_layers):
                for h in range(graph.n_heads):
                    one = torch.zeros(graph.n_receivers, dtype=torch.bool)
                    one[graph.receiver_index[f"a{l}.h{h}<{m.group(1)}>"]] = True
                    out.append((f"a{l}.h{h}<{m.group(1)}>", token, one))
            continue
        if token in graph.receiver_index:
            mask[graph.receiver_index[token]] = True
        elif token in graph.source_index and token != "input":
            mask[graph.node_receivers(token)] = True
        elif (m := GROUP.fullmatch(token)) and (cls := _class_of(m.group(1), classes)):
            kinds = m.group(2) or "qkv"
            for head in classes[cls]:
                for k in kinds:
                    mask[graph.receiver_index[f"{head}<{k}>"]] = True
        else:
            groups = ", ".join(c.replace("_", "-") for c in classes) or f"none for {task} on this model"
            last = graph.n_layers - 1  # examples that exist in this model
            raise UserError(
                f"--receivers {token!r} is not a receiver (a{last}.h0<q>, m{last}, logits), a node "
                f"(a{last}.h0), a scan (all-heads<q|k|v>) or a canonical group of the task ({groups}) of "
                f"this {graph.describe()} model"
            )
        out.append((token, "", mask))
    return out


def parse_senders(spec: str, graph: Graph) -> list[int]:
    """Source rows of the named heads and MLPs (default: every head and MLP), in graph order."""
    if not spec.split():
        return [i for i, s in enumerate(graph.sources) if s != "input"]
    rows = []
    for token in spec.split():
        if token not in graph.source_index or token == "input":
            raise UserError(
                f"--senders {token!r} is not a head (a{graph.n_layers - 1}.h0) or an MLP "
                f"(m{graph.n_layers - 1}) of this {graph.describe()} model"
            )
        rows.append(graph.source_index[token])
    return sorted(set(rows))
