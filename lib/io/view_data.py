"""What a run's page shows, read from the run's own files (so a finished run's page can be rebuilt): one view per
task for edge-level circuits (05, 06, 24) and feature circuits (09), one per graph for attribution graphs (10).
Plain lists and numbers, the JSON view.js draws."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

NODE_CEILING = 0.95  # the graph page's node slider reaches this cumulative influence (or the run's, if higher)
MAX_GRAPH_EDGES = 400_000  # fewer edges than this among the nodes the slider can reach; else the ceiling drops


def number(x):
    """A JSON number: NaN and infinities as null, numpy scalars as Python's."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def f32(values) -> list:
    """float32 values as the shortest decimals that read back to them (half the bytes of a double's repr)."""
    return [float(str(v)) for v in np.asarray(values, dtype=np.float32)]


def interval(row, name: str) -> list:
    return [number(row.get(name)), number(row.get(f"{name}_ci_low")), number(row.get(f"{name}_ci_high"))]


def headlines(run_dir: Path) -> dict[str, str]:
    """Each task's headline numbers from headline.csv, as one line ({} without the file)."""
    path = run_dir / "headline.csv"
    if not path.is_file():
        return {}
    lines: dict[str, list[str]] = {}
    for r in pd.read_csv(path).itertuples():
        if number(r.value) is not None:
            lines.setdefault(str(r.task), []).append(f"{r.metric} = {number(r.value):.4g}")
    return {task: "; ".join(parts) for task, parts in lines.items()}


def union_of(circuits: list[list[str]]) -> tuple[list[str], list[list[int]]]:
    """The edges of several circuits (first seen first) and each circuit's edges as indices into them."""
    index: dict[str, int] = {}
    for circuit in circuits:
        for e in circuit:
            index.setdefault(e, len(index))
    return list(index), [[index[e] for e in circuit] for circuit in circuits]


def _graph(record: dict):
    from lib.core.graph import Graph

    m = record["model"]
    return Graph(m["n_layers"], m["n_heads"], bool(m.get("architecture", {}).get("parallel", False)))


def _canonical(record: dict, task: str, edges: list[str]) -> list[bool] | None:
    from lib.core.errors import UserError
    from lib.methods.canonical import canonical_circuit

    graph = _graph(record)
    try:
        mask = canonical_circuit(task, graph, record["model"]["name"])
    except UserError:
        return None
    if mask is None:
        return None
    return [bool(mask[graph.edge_index(e)]) for e in edges]


def _edge_view(record, task, view_id, title, edges, scores, steps, default_step, **extra) -> dict:
    """scores: one per edge, ranked by |score| in that order; None where each step carries its own, or none."""
    m = record["model"]
    canonical = _canonical(record, task, edges)
    legend = extra.pop("legend")
    if canonical is not None:
        legend["dashed"] = "dashed: not in the canonical circuit (a false positive)"
    return {
        "id": view_id,
        "kind": "edges",
        "title": title,
        "task": task,
        "n_layers": m["n_layers"],
        "n_heads": m["n_heads"],
        "parallel": bool(m.get("architecture", {}).get("parallel", False)),
        "edges": {
            "src": [e.split("->")[0] for e in edges],
            "rcv": [e.split("->")[1] for e in edges],
            "score": [None] * len(edges) if scores is None else [number(s) for s in scores],
        },
        "canonical": canonical,
        "steps": steps,
        "default_step": default_step,
        "legend": legend,
        **extra,
    }


EAP_LEGEND = {
    "help": "blue: ablating the edge lowers the task metric (the edge helps the task)",
    "hurt": "red: ablating the edge raises the task metric (it works against the task)",
    "size": "width: |score|; rows: input at the bottom, logits at the top",
}


def views_05(run_dir: Path, record: dict) -> list[dict]:
    heads = headlines(run_dir)
    scores, curve = pd.read_csv(run_dir / "edge_scores.csv"), pd.read_csv(run_dir / "faithfulness_curve.csv")
    area = pd.read_csv(run_dir / "area.csv") if (run_dir / "area.csv").is_file() else pd.DataFrame()
    opts = record["options"]
    views = []
    for task in opts["tasks"]:
        s = scores[scores.task == task].sort_values("abs_rank", kind="stable")
        steps = [
            {
                "label": f"top {int(r.edges_kept)} edges",
                "size": int(r.edges_kept),
                "numbers": {
                    "faithfulness": interval(r._asdict(), "faithfulness"),
                    "metric": interval(r._asdict(), "metric"),
                },
            }
            for r in curve[curve.task == task].itertuples()
        ]
        for k in opts.get("top_k") or []:  # the saved circuits' sizes, where the curve did not evaluate them
            k = min(int(k), len(s))
            if all(st["size"] != k for st in steps):
                steps.append({"label": f"top {k} edges (saved circuit; not on the curve)", "size": k, "numbers": {}})
        steps.sort(key=lambda st: st["size"])
        saved = min(int(k) for k in opts["top_k"]) if opts.get("top_k") else steps[-1]["size"]
        default = next(i for i, st in enumerate(steps) if st["size"] >= min(saved, steps[-1]["size"]))
        areas = {}
        for r in area[area.task == task].to_dict("records") if len(area) else []:
            areas[f"{r['metric'].upper()} ({r['ranking']} ranking)"] = interval(r, "value")
        method = opts.get("method", "eap")
        views.append(
            _edge_view(
                record,
                task,
                task,
                f"{task}: {method} edges",
                list(s.edge),
                list(s.score),
                steps,
                default,
                score_label=f"{method} score (m(ablated) - m(clean))",
                helps_sign=-1,
                areas=areas,
                slider_label="circuit size (top-k edges by |score|)",
                headline=heads.get(task, ""),
                legend=dict(EAP_LEGEND),
            )
        )
    return views


def views_06(run_dir: Path, record: dict) -> list[dict]:
    sweep = pd.read_csv(run_dir / "acdc_sweep.csv")
    sweep = sweep[sweep.tau.notna()]  # ACDC's rows; --prune-with's candidate set alone saves no circuit file
    area = pd.read_csv(run_dir / "area.csv") if (run_dir / "area.csv").is_file() else pd.DataFrame()
    circuits: dict[tuple, dict] = {}
    for path in sorted(run_dir.glob("circuit_*.json")):
        if path.name.endswith(".eap-ig.json"):
            continue
        c = json.loads(path.read_text())
        circuits[(c["task"], c["method"], float(c["params"]["tau"]))] = {e["edge"]: e["score"] for e in c["edges"]}
    views = []
    for (task, method), part in sweep.groupby(["task", "method"], sort=False):
        task, method, part = str(task), str(method), part.sort_values("tau")
        records = part.to_dict("records")
        kept_at = [circuits.get((task, method, float(r["tau"])), {}) for r in records]
        # each tau's edges by |score| (ACDC's worsening, measured at that tau)
        orders = [sorted(kept, key=lambda e: -abs(kept[e]) if kept[e] is not None else 0) for kept in kept_at]
        edges, members = union_of(orders)
        steps = []
        for r, kept, order, member in zip(records, kept_at, orders, members):
            numbers = {"faithfulness": interval(r, "faithfulness"), "edges kept": number(r["edges_kept"])}
            for a in (
                area[(area.task == task) & (area.method == method) & (area.tau == r["tau"])].to_dict("records")
                if len(area)
                else []
            ):
                numbers[f"{a['metric'].upper()} ({a['ranking']} ranking)"] = interval(a, "value")
            steps.append(
                {
                    "label": f"tau = {r['tau']:g} ({int(r['edges_kept'])} edges)",
                    "size": int(r["edges_kept"]),
                    "members": member,
                    "scores": [number(kept[e]) for e in order],
                    "numbers": numbers,
                }
            )
        views.append(
            _edge_view(
                record,
                task,
                f"{task}·{method}",
                f"{task}: {method} circuits by threshold",
                edges,
                None,
                steps,
                0,
                score_label="ACDC score (how much removing the edge worsens the metric, at this tau)",
                helps_sign=1,
                slider_label="ACDC threshold tau",
                headline="; ".join(  # this method's own numbers (headline.csv holds plain ACDC's)
                    f"tau={r['tau']:g}: {int(r['edges_kept'])} edges, faithfulness {r['faithfulness']:.3f}"
                    for r in part.to_dict("records")
                ),
                legend={
                    "help": "blue: removing the edge worsens the metric (ACDC keeps it)",
                    "hurt": "red: removing the edge improves the metric",
                    "size": "width: |score| at this tau; rows: input at the bottom, logits at the top",
                },
            )
        )
    return views


def views_24(run_dir: Path, record: dict) -> list[dict]:
    heads = headlines(run_dir)
    table = pd.read_csv(run_dir / "circuits.csv")
    views = []
    for task in record["options"]["tasks"]:
        masks = json.loads((run_dir / f"circuits_{task}.json").read_text())
        labels = sorted(masks, key=lambda k: (len(masks[k]), k))
        edges, members = union_of([masks[k] for k in labels])
        steps = []
        for label, member in zip(labels, members):
            rows = table[(table.task == task) & (table.circuit == label)].to_dict("records")
            numbers = (
                {"faithfulness": interval(rows[0], "faithfulness"), "nodes": number(rows[0]["nodes"])} if rows else {}
            )
            steps.append(
                {
                    "label": f"{label} ({len(masks[label])} edges)",
                    "size": len(masks[label]),
                    "members": member,
                    "numbers": numbers,
                }
            )
        views.append(
            _edge_view(
                record,
                task,
                task,
                f"{task}: the methods' circuits",
                edges,
                None,
                steps,
                0,
                score_label="score",
                helps_sign=1,
                slider_label="circuit (ordered by size)",
                headline=heads.get(task, ""),
                legend={"size": "each method's circuit as a set of edges (24 keeps no per-edge scores)"},
            )
        )
    return views


def views_09(run_dir: Path, record: dict) -> list[dict]:
    heads = headlines(run_dir)
    effects, features = pd.read_csv(run_dir / "node_effects.csv"), pd.read_csv(run_dir / "features.csv")
    edges, curve = pd.read_csv(run_dir / "edges.csv"), pd.read_csv(run_dir / "faithfulness_curve.csv")
    opts = record["options"]
    views = []
    for task in opts["tasks"]:
        e = effects[effects.task == task].reset_index(drop=True)
        positions = ["all positions (summed)" if pd.isna(p) else str(p) for p in e.position]
        order = sorted(set(positions), key=_position_key)  # left to right: earliest to the answer's
        sites = sorted(set(e.site), key=_site_key)
        f = features[features.task == task].set_index("node")
        base = [n.split("@")[0] for n in e.node]  # features.csv names a feature without its position
        ids = list(e.node)
        lookup = {n: i for i, n in enumerate(ids)}
        ed = edges[edges.task == task]
        keep = [(lookup.get(u), lookup.get(d), x) for u, d, x in zip(ed.upstream, ed.downstream, ed.effect)]
        keep = [k for k in keep if k[0] is not None and k[1] is not None]
        c = curve[(curve.task == task) & (curve.variant == "features") & (curve.threshold > 0)]
        steps = [
            {
                "threshold": number(r["threshold"]),
                "nodes_kept": int(r["nodes_kept"]),
                "numbers": {"faithfulness": interval(r, "faithfulness"), "completeness": interval(r, "completeness")},
            }
            for r in c.sort_values("threshold", ascending=False).to_dict("records")
        ]
        saved = float(opts["node_threshold"])
        if all(s["threshold"] != saved for s in steps):
            steps.append({"threshold": saved, "nodes_kept": int((e.effect.abs() >= saved).sum()), "numbers": {}})
            steps.sort(key=lambda s: -s["threshold"])
        views.append(
            {
                "id": task,
                "kind": "features",
                "title": f"{task}: feature circuit",
                "task": task,
                "sites": sites,
                "positions": order,
                "nodes": {
                    "id": ids,
                    "site": list(e.site),
                    "pos": positions,
                    "feature": [int(x) for x in e.feature],
                    "effect": [number(x) for x in e.effect],
                    "error": [bool(x < 0) for x in e.feature],
                    "promotes": [str(f.promotes[b]) if b in f.index else "" for b in base],
                    "top": [str(f.top_activations[b]) if b in f.index else "" for b in base],
                },
                "edges": {
                    "up": [k[0] for k in keep],
                    "down": [k[1] for k in keep],
                    "effect": [number(k[2]) for k in keep],
                },
                "steps": steps,
                "default_step": next(i for i, s in enumerate(steps) if s["threshold"] == saved),
                "helps_sign": -1,
                "slider_label": "node threshold (|effect| on the metric)",
                "note": f"Edges were computed among the saved circuit's nodes (|effect| >= {saved:g}) only; "
                "below that threshold the extra nodes are drawn without edges.",
                "headline": heads.get(task, ""),
                "legend": {
                    "help": "blue: patching the node lowers the metric (it helps the task)",
                    "hurt": "red: patching it raises the metric",
                    "shapes": "circles: features (size: |effect|); squares: error nodes",
                },
            }
        )
    return views


def _position_key(name: str):
    """end-5, ..., end-1, end (positions counted back from the answer), then anything else by name."""
    if name == "end":
        return (0, 0, name)
    if name.startswith("end-") and name[4:].isdigit():
        return (0, -int(name[4:]), name)
    return (1, 0, name)


def _site_key(site: str):
    """embed first, then by layer: attn, mlp, resid (the order they are computed)."""
    if site == "embed":
        return (-1, 0)
    digits = "".join(ch for ch in site if ch.isdigit())
    kind = site.rstrip("0123456789")
    return (int(digits) if digits else 0, {"attn": 0, "mlp": 1, "resid": 2}.get(kind, 3))
