"""The page of an 11_compare_models.py run: per task, the two models' head-level circuits on one layout (A's,
B's, the edges both keep), with each circuit's faithfulness in its own model and in the other."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lib.io.view_data import _edge_view, headlines, interval, number, union_of


def views_11(run_dir: Path, record: dict) -> list[dict]:
    heads = headlines(run_dir)
    circuits = json.loads((run_dir / "circuits.json").read_text())
    cross = pd.read_csv(run_dir / "cross_circuits.csv")
    behaviour = pd.read_csv(run_dir / "behaviour.csv")
    a, b = record["options"]["models"]
    same_shape = all(record["model"][k] == record["model_b"][k] for k in ("n_layers", "n_heads"))
    views = []
    for task in record["options"]["tasks"]:
        masks = circuits[task]
        label_a, label_b = list(masks)
        both = [e for e in masks[label_a] if e in set(masks[label_b])]
        named = (
            {label_a: masks[label_a], label_b: masks[label_b], "kept by both": both}
            if same_shape
            else {label_a: masks[label_a]}
        )
        edges, members = union_of(list(named.values()))
        steps = []
        for (label, member), which in zip(zip(named, members), ("A", "B", None)):
            numbers: dict = {"edges": number(len(member))}
            own = behaviour[(behaviour.task == task) & (behaviour.model == which)] if which else behaviour[:0]
            if len(own):
                numbers["faithfulness in its own model"] = interval(own.iloc[0].to_dict(), "faithfulness")
            other = {"A": "B", "B": "A"}.get(which or "")
            rows = (
                cross[(cross.task == task) & (cross.circuit_of == which) & (cross.run_in == other)]
                if other
                else cross[:0]
            )
            if len(rows):
                numbers[f"faithfulness in {other}"] = interval(rows.iloc[0].to_dict(), "faithfulness")
            steps.append(
                {"label": f"{label} ({len(member)} edges)", "size": len(member), "members": member, "numbers": numbers}
            )
        note = "" if same_shape else f" ({b} has another shape: only {a}'s circuit is drawn)"
        views.append(
            _edge_view(
                record,
                task,
                task,
                f"{task}: the circuits of {a} and {b}{note}",
                edges,
                None,
                steps,
                0,
                score_label="score",
                helps_sign=1,
                slider_label="circuit",
                headline=heads.get(task, ""),
                legend={"size": "each model's top-k EAP-IG circuit as a set of edges, and the edges both keep"},
            )
        )
    return views
