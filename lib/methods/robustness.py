"""One circuit's faithfulness under the methodological choices papers rarely report (Miller et al. 2024,
"Transformer circuit faithfulness metrics are not robust"): ablation, corruption, edge vs node patching,
positions patched, and the metric. Every setting is normalized against its own empty circuit:

    faithfulness = (mean m(circuit) - mean m(empty)) / (mean m(full) - mean m(empty))

with the empty circuit (every edge ablated) and the full model under the same choices, so 1 = the full model
and 0 = nothing kept, whatever the choice.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from lib.core.forward import answer_logits
from lib.core.graph import Graph
from lib.core.metrics import data_metric, kl_divergence
from lib.core.patching import ABLATIONS, evaluate_mask
from lib.methods import intervals

LEVELS = ("edges", "nodes")
POSITIONS = ("all", "named")
METRICS = ("task", "prob_correct", "kl")
METRIC_MEANING = {
    "task": "the task metric (DEFINITIONS.md, Metrics)",
    "prob_correct": "total probability of the correct answers",
    "kl": "minus KL(full model || circuit) at the answer position",
}
SENSITIVITY = ((0.1, "robust"), (0.3, "moderately sensitive"))  # range of faithfulness across the grid


def node_level(graph: Graph, keep: torch.Tensor) -> torch.Tensor:
    """Node patching of a circuit: every node on one of its edges keeps all its outgoing edges, every other
    node has all of them ablated ([S, R] bool)."""
    nodes = set(graph.nodes_of(keep))
    rows = torch.tensor([s in nodes for s in graph.sources])
    return graph.edge_exists & rows[:, None]


def named_positions(task, data) -> torch.Tensor | None:
    """[N, P] bool: the token positions the task's structure names (IOI: S2, S1+1, end), or None."""
    if task.positions is None:
        return None
    where = torch.zeros(data.clean.shape, dtype=torch.bool)
    rows = torch.arange(len(data))
    for index in task.positions(data).values():
        where[rows, index.cpu()] = True
    return where


def prompt_metrics(logits: torch.Tensor, full_logits: torch.Tensor, data) -> dict[str, np.ndarray]:
    """Each metric per prompt ([N]) for answer logits [N, V]; higher is always closer to the full model."""
    probs = logits.double().softmax(-1)
    correct = data.correct.to(logits.device)
    p_correct = (probs.gather(-1, correct.clamp_min(0)) * (correct >= 0)).sum(-1)
    return {
        "task": data_metric(logits, data).double().cpu().numpy(),
        "prob_correct": p_correct.cpu().numpy(),
        "kl": -kl_divergence(full_logits, logits).double().cpu().numpy(),
    }


def grid(task, corruptions: list[str], has_positions: bool) -> list[dict]:
    """Every combination of the choices (metrics excepted: all come from the same forward passes)."""
    positions = POSITIONS if has_positions else ("all",)
    return [
        dict(zip(("corruption", "ablation", "level", "positions"), c))
        for c in itertools.product(corruptions, ABLATIONS, LEVELS, positions)
    ]


def evaluate(
    model,
    graph: Graph,
    task,
    datasets: dict,
    keep: torch.Tensor,
    batch_size: int,
    n_bootstrap: int,
    seed: int,
    progress=None,
) -> list[dict]:
    """Rows (choices, metric, faithfulness with its 95% interval, means) for every setting of the grid.
    datasets: corruption -> TaskData (the same clean prompts, each corruption's corrupted ones)."""
    rows = []
    empty = torch.zeros_like(graph.edge_exists)
    for corruption, data in datasets.items():
        full_logits = answer_logits(model, data.clean, data.answer_pos, batch_size)
        full = prompt_metrics(full_logits, full_logits, data)
        named = named_positions(task, data)
        cache = {}
        for choice in grid(task, [corruption], named is not None):
            pos = named if choice["positions"] == "named" else None
            key = (choice["ablation"], choice["positions"])
            if key not in cache:  # the empty circuit is the same at edge and node level
                cache[key] = prompt_metrics(
                    evaluate_mask(model, graph, data, empty, choice["ablation"], batch_size, positions=pos),
                    full_logits,
                    data,
                )
            circuit_keep = keep if choice["level"] == "edges" else node_level(graph, keep)
            circuit = prompt_metrics(
                evaluate_mask(model, graph, data, circuit_keep, choice["ablation"], batch_size, positions=pos),
                full_logits,
                data,
            )
            for metric in METRICS:
                m, f, e = circuit[metric], full[metric], cache[key][metric]
                rows.append(
                    {
                        **choice,
                        "metric": metric,
                        "n": len(data),
                        "edges_kept": int(circuit_keep.sum()),
                        **intervals.columns(
                            "faithfulness", intervals.ratio_of_means, m, f, e, n_resamples=n_bootstrap, seed=seed
                        ),
                        "circuit_mean": m.mean(),
                        "full_mean": f.mean(),
                        "empty_mean": e.mean(),
                        "full_minus_empty": f.mean() - e.mean(),
                    }
                )
            if progress is not None:
                progress.update(1)
    return rows


def describe(row) -> str:
    return f"{row['ablation']}/{row['corruption']}/{row['level']}/{row['positions']} positions/{row['metric']}"


def verdict(task_name: str, rows) -> dict:
    """The range of faithfulness across the grid and a one-line verdict."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    finite = frame[np.isfinite(frame.faithfulness)]
    default = finite.iloc[0]  # the grid starts with the default choices and the task metric
    values = finite.faithfulness.to_numpy()
    low, high = finite.iloc[int(np.argmin(values))], finite.iloc[int(np.argmax(values))]
    spread = float(high.faithfulness - low.faithfulness)
    word = next((w for limit, w in SENSITIVITY if spread <= limit), "not robust")
    line = (
        f"{task_name}: faithfulness {default.faithfulness:.2f} under the default choices "
        f"({describe(default)}); from {low.faithfulness:.2f} ({describe(low)}) to {high.faithfulness:.2f} "
        f"({describe(high)}) across {len(finite)} settings: range {spread:.2f}, {word}"
    )
    return {
        "task": task_name,
        "default_faithfulness": float(default.faithfulness),
        "min_faithfulness": float(low.faithfulness),
        "min_at": describe(low),
        "max_faithfulness": float(high.faithfulness),
        "max_at": describe(high),
        "range": spread,
        "n_settings": len(finite),
        "verdict": word,
        "line": line,
    }
