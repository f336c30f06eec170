"""An attribution graph's view (10): the nodes its node slider can reach and every edge among them, from the run's
graphs/<slug>.npz, so that the page prunes as lib.features.influence.prune does (circuit-tracer's prune_graph).

Exact by construction: pruning keeps the nodes whose influence reaches a cut that only falls as the node
threshold rises, so every node kept at a threshold up to the page's ceiling is among the nodes kept at the
ceiling; the page holds those nodes, every edge among them, and every node's influence (the cut is a quantile of
all of them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lib.io.view_data import MAX_GRAPH_EDGES, NODE_CEILING, f32, headlines, number

INTERVENTION_COLUMNS = ("predicted_direct", "predicted_graph", "frozen", "real", "ct_default", "ct_constrained")


def _cut(influence: np.ndarray, threshold: float) -> float:
    import torch

    from lib.features.influence import find_threshold

    return float(find_threshold(torch.from_numpy(influence), threshold))


def reachable(influence: np.ndarray, adjacency: np.ndarray, fixed: int, floor: float) -> tuple[float, np.ndarray]:
    """The node ceiling (NODE_CEILING, or floor if higher, lowered towards floor while the nodes it reaches hold
    more than MAX_GRAPH_EDGES edges) and the mask of those nodes (tokens and logits, the last `fixed`, always)."""
    n = len(influence)
    ceiling = max(NODE_CEILING, floor)
    while True:
        mask = influence >= _cut(influence, ceiling)
        mask[n - fixed :] = True
        edges = int(np.count_nonzero(adjacency[np.ix_(mask, mask)]))
        if edges <= MAX_GRAPH_EDGES or ceiling <= floor:
            return ceiling, mask
        ceiling = max(floor, round(ceiling - 0.05, 4))


def graph_views(run_dir: Path, record: dict) -> list[dict]:
    opts = record["options"]
    n_layers = int(record["model"]["n_layers"])
    scores = pd.read_csv(run_dir / "scores.csv")
    inter = pd.read_csv(run_dir / "interventions.csv") if (run_dir / "interventions.csv").is_file() else None
    heads = headlines(run_dir)
    views = []
    for row in scores.to_dict("records"):
        slug = row["graph"]
        front = json.loads((run_dir / "graphs" / f"{slug}.json").read_text())
        z = np.load(run_dir / "graphs" / f"{slug}.npz")
        views.append(graph_view(row, front, z, n_layers, opts, inter, heads.get(row["task"], "")))
    return views


def graph_view(row: dict, front, z, n_layers: int, opts: dict, inter, task_headline: str) -> dict:
    slug, task = row["graph"], row["task"]
    adjacency, influence = z["adjacency"], z["influence"].astype(np.float32)
    n, n_tokens, n_logits = len(influence), len(z["tokens"]), len(z["logit_probs"])
    n_features = len(z["selected"])
    n_errors = n - n_features - n_tokens - n_logits
    n_pos = n_tokens
    ceiling, mask = reachable(influence, adjacency, n_tokens + n_logits, float(opts["node_threshold"]))
    keep = np.flatnonzero(mask)
    ids = [str(x) for x in z["node_ids"]]
    ordered = np.sort(influence)[::-1]
    cumulative = np.empty(n)
    cumulative[np.argsort(-influence, kind="stable")] = np.cumsum(ordered, dtype=np.float64) / ordered.sum()
    tokens = list(front["metadata"]["prompt_tokens"])
    logit_label = {d["node_id"]: d["clerp"] for d in front["nodes"] if d["feature_type"] == "logit"}
    nodes: dict[str, list] = {k: [] for k in ("id", "type", "layer", "pos", "activation", "prob", "label")}
    for i in keep.tolist():
        if i < n_features:
            layer, pos, feature = (int(x) for x in z["active"][int(z["selected"][i])])
            kind, label = "feature", f"L{layer} feature {feature}"
            activation = number(z["activations"][int(z["selected"][i])])
        elif i < n_features + n_errors:
            layer, pos = divmod(i - n_features, n_pos)
            kind, label, activation = "error", f"L{layer} error @{pos}", None
        elif i < n - n_logits:
            layer, pos = -1, i - n_features - n_errors
            kind, label, activation = "token", repr(tokens[pos]), None
        else:
            layer, pos = n_layers, n_pos - 1
            kind, label, activation = "logit", logit_label.get(ids[i], ids[i]), None
        prob = number(z["logit_probs"][i - (n - n_logits)]) if kind == "logit" else None
        for key, value in zip(nodes, (ids[i], kind, layer, pos, activation, prob, label)):
            nodes[key].append(value)
    nodes["influence"] = f32(influence[keep])
    nodes["cumulative"] = [number(c) for c in cumulative[keep]]
    sub = adjacency[np.ix_(keep, keep)]
    t, s = np.nonzero(sub)  # adjacency[target, source]
    interventions = {}
    if inter is not None:
        for r in inter[(inter.graph == slug) & (inter.n_features == 1)].to_dict("records"):
            for col in INTERVENTION_COLUMNS:
                interventions.setdefault(r["features"], {})[f"{r['intervention']}: {col}"] = number(r[col])
    positive = ordered[ordered > 0]
    return {
        "id": slug,
        "kind": "graph",
        "title": f"{task} graph {slug}: {row['prompt']!r}",
        "task": task,
        "n_layers": n_layers,
        "n_pos": n_pos,
        "n_total": n,
        "counts": {"features": n_features, "errors": n_errors, "tokens": n_tokens, "logits": n_logits},
        "prompt_tokens": tokens,
        "nodes": nodes,
        "edges": {"t": t.tolist(), "s": s.tolist(), "w": f32(sub[t, s])},
        "influence_sorted": f32(positive),
        "influence_total": float(positive.astype(np.float64).sum()),
        "thresholds": {"node": float(opts["node_threshold"]), "edge": float(opts["edge_threshold"])},
        "slider": {"node": [0.05, ceiling, "any"], "edge": [0.3, 0.99, "any"]},
        "scores": {
            k: number(row[k]) if isinstance(row[k], (int, float, np.number)) else row[k]
            for k in (
                "replacement_full",
                "completeness_full",
                "replacement_pruned",
                "completeness_pruned",
                "features_pruned",
                "edges_pruned",
                "top_logit",
                "top_logit_prob",
            )
        },
        "interventions": interventions,
        "note": f"The node slider reaches {ceiling:g} of cumulative influence: the page holds the {len(keep)} nodes "
        f"kept there (of {n}) and the {len(t)} edges among them.",
        "headline": f"replacement {number(row['replacement_full']):.3f}, completeness "
        f"{number(row['completeness_full']):.3f}, {int(row['features_pruned'])} features after pruning"
        + (f" ({task_headline})" if task_headline else ""),
        "legend": {
            "help": "blue: a positive edge weight (the source raises the target)",
            "hurt": "red: a negative edge weight",
            "shapes": "circles: features; grey squares: errors; orange: tokens; green: logits",
        },
    }
