"""Causal-scrubbing hypotheses for a circuit: the task's published feature claims, the answer feature, the
complement-only special case, and the all-resampled baseline."""

from __future__ import annotations

import torch

from lib.core.choices import HYPOTHESES  # noqa: F401 (re-exported)
from lib.core.errors import UserError
from lib.core.graph import Graph
from lib.methods.scrubbing import Hypothesis

COMPLEMENT_ONLY = "complement-only (weaker test)"
BASELINE = "baseline (all inputs resampled)"


def canonical_features(task: str, graph: Graph, keep: torch.Tensor) -> Hypothesis | None:
    """The task's published claims (tasks/<name>.py CANONICAL["scrub"]) on the nodes of this circuit;
    nodes it names no claim for (MLPs, input) depend on the whole prompt. None where none is published."""
    from tasks import TASKS

    canonical = TASKS[task].canonical or {}
    spec = canonical.get("scrub")
    if spec is None:
        return None
    nodes = set(graph.nodes_of(keep)) - {"input", "logits"}
    features, positions = {}, {}
    for cls, (feature, position) in spec.items():
        if cls == "*":
            members = nodes
        else:
            members = set()
            for head in canonical["classes"][cls]:
                l, h = (int(x) for x in head.split("."))
                if l >= graph.n_layers or h >= graph.n_heads:
                    raise UserError(
                        f"the {task} hypothesis names head {head}, which a {graph.n_layers}-layer, "
                        f"{graph.n_heads}-head model does not have"
                    )
                members.add(f"a{l}.h{h}")
        for node in members & nodes:
            features[node], positions[node] = tuple(feature), position
    return Hypothesis("canonical features", keep, features, positions)


def answer_feature(task: str, graph: Graph, keep: torch.Tensor) -> Hypothesis:
    """Every node of the circuit depends only on the feature that determines the answer."""
    from tasks import TASKS

    feature = TASKS[task].answer_feature
    if feature is None:
        raise UserError(f"task {task} names no feature that determines its answer")
    nodes = [n for n in graph.nodes_of(keep) if n not in ("input", "logits")]
    return Hypothesis(f"answer feature ({feature})", keep, {n: (feature,) for n in nodes})


def complement_only(keep: torch.Tensor) -> Hypothesis:
    """No feature claims: only the inputs outside the circuit are resampled."""
    return Hypothesis("whole prompt (complement only)", keep, kind=COMPLEMENT_ONLY)


def baseline(graph: Graph) -> Hypothesis:
    """The empty hypothesis: every input resampled, i.e. the model on a random other prompt."""
    return Hypothesis(
        "empty (baseline)", torch.zeros(graph.n_sources, graph.n_receivers, dtype=torch.bool), kind=BASELINE
    )


def full(graph: Graph) -> Hypothesis:
    """Every edge, every node on the whole prompt: the scrubbed model is the model itself."""
    return Hypothesis("full model", graph.edge_exists.clone(), kind=COMPLEMENT_ONLY)


def main_hypothesis(spec: str, task: str, graph: Graph, keep: torch.Tensor, circuit_label: str) -> Hypothesis:
    """The hypothesis --hypothesis asks for: auto = the published claims for a canonical circuit, else the
    answer feature."""
    if spec not in HYPOTHESES:
        raise UserError(f"unknown hypothesis {spec!r}; choose from {', '.join(HYPOTHESES)}")
    if spec == "whole-prompt":
        return complement_only(keep)
    if spec == "answer-feature":
        return answer_feature(task, graph, keep)
    if spec == "auto" and "canonical" not in circuit_label:
        return answer_feature(task, graph, keep)
    published = canonical_features(task, graph, keep)
    if published is None and spec == "canonical":
        raise UserError(f"task {task} publishes no per-node features; use --hypothesis answer-feature")
    return published if published is not None else answer_feature(task, graph, keep)
