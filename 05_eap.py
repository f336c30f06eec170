"""Edge attribution patching (EAP, EAP-IG): every edge's score, circuits, faithfulness curve, ROC."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from lib.core import choices
from lib.core.errors import UserError
from lib.io import checks, cli, progress
from lib.io.circuit_json import Circuit, eap_ig_json
from lib.io.headline import Metric

app = cli.script_app(__doc__)
HEADLINE = [
    Metric(
        "edges_for_0.8_faithfulness",
        "faithfulness_curve.csv",
        fn=lambda d: d.edges_kept[d.faithfulness >= 0.8].min() if (d.faithfulness >= 0.8).any() else float("nan"),
    ),
    Metric(
        "auc", "roc.csv", fn=lambda d: (float(d.auc.iloc[0]), float(d.auc_ci_low.iloc[0]), float(d.auc_ci_high.iloc[0]))
    ),
    Metric("cpr", "area.csv", "value", {"metric": "cpr"}),
    Metric("cmd", "area.csv", "value", {"metric": "cmd"}),
    Metric("cpr_relative_to_random", "area.csv", "relative_to_random", {"metric": "cpr"}),
]
DIAGRAM_EDGES = 40  # edges drawn in the diagram (the top ones by |score|)


@app.command()
def main(
    tasks: cli.TasksOpt = "all",
    model: cli.ModelOpt = "gpt2",
    device: cli.DeviceOpt = "auto",
    dtype: cli.DtypeOpt = "float32",
    n_prompts: cli.NPromptsOpt = 100,
    batch_size: cli.BatchOpt = 32,
    seed: cli.SeedOpt = 0,
    out: cli.OutOpt = Path("results"),
    task_metric: cli.TaskMetricOpt = "",
    method: Annotated[
        str,
        typer.Option(
            help="eap | eap-ig (input embeddings interpolated) | eap-ig-activations "
            "(each node group's output interpolated) | clean-corrupted"
        ),
    ] = "eap-ig",
    ig_steps: Annotated[int, typer.Option(help="integration steps of EAP-IG")] = 5,
    ig_points: Annotated[
        str,
        typer.Option(
            "--ig-points",
            help="right: alpha = k/steps, k = 1..steps (ends at "
            "the clean point) | left: k = 0..steps-1 (starts at the corrupted "
            "point, as the EAP-IG library)",
        ),
    ] = "right",
    metric: Annotated[str, typer.Option(help="task (the task metric); kl is rejected for EAP")] = "task",
    top_k: Annotated[str, typer.Option("--top-k", help="circuit sizes to save, space-separated")] = "100",
    threshold: Annotated[float | None, typer.Option(help="also save the circuit of edges with |score| >= this")] = None,
    ablation: Annotated[str, typer.Option(help="resample | mean | zero (for the faithfulness curve)")] = "resample",
    n_random: Annotated[int, typer.Option("--n-random", help="random circuits per size for the area baseline")] = 10,
    export: cli.ExportOpt = "",
    n_bootstrap: cli.NBootstrapOpt = 1000,
    quiet: cli.QuietOpt = False,
    resume: cli.ResumeOpt = None,
):
    if method not in choices.EAP_METHODS:
        raise UserError(f"unknown method {method!r}; choose from {', '.join(choices.EAP_METHODS)}")
    if metric == "kl":
        raise UserError(
            "--metric kl cannot drive EAP: the gradient of KL(clean || model) is zero at the clean "
            "point; use --metric task"
        )
    if metric != "task":
        raise UserError(f"unknown metric {metric!r} for EAP; use --metric task")
    checks.check_between(1, 1000, ("--ig-steps", ig_steps))
    if ig_points not in choices.IG_POINTS:
        raise UserError(f"unknown --ig-points {ig_points!r}; choose from {', '.join(choices.IG_POINTS)}")
    if ablation not in choices.ABLATIONS:
        raise UserError(f"unknown ablation {ablation!r}; choose from {', '.join(choices.ABLATIONS)}")
    ks = checks.parse_ints(top_k, "--top-k")
    if not ks or any(k < 1 for k in ks):
        raise UserError("--top-k sizes must be at least 1")
    checks.check_finite("--threshold", threshold)
    if threshold is not None and threshold < 0:
        raise UserError(
            f"--threshold must be non-negative (a circuit is the edges with |score| >= it; got {threshold})"
        )
    checks.check_export(export)
    checks.check_between(0, 1000, ("--n-random", n_random))
    opts = cli.common(
        tasks, model, device, dtype, n_prompts, batch_size, seed, out, quiet, n_bootstrap, task_metric=task_metric
    )
    # the work's imports, once the options are valid (--help and option errors never pay for them)
    import pandas as pd

    from lib.core.graph import graph_of
    from lib.io import plots

    extra = dict(
        method=method,
        ig_steps=ig_steps,
        ig_points=ig_points,
        metric=metric,
        top_k=ks,
        threshold=threshold,
        ablation=ablation,
        n_random=n_random,
        export=export,
    )
    with cli.experiment("05_eap", opts, resume=resume, headline=HEADLINE, **extra) as (lm, run):
        graph = graph_of(lm)
        checks.check_edge_counts(graph, *(("--top-k", k) for k in ks))
        results = cli.per_task(
            run,
            opts.tasks,
            lambda name: eap_task(
                lm, graph, run, name, opts, method, ig_steps, ks, threshold, ablation, n_random, export, ig_points
            ),
        )
        curve_rows = [row for r in results.values() for row in r["curve_rows"]]
        roc_rows = [row for r in results.values() for row in r["roc_rows"]]
        rocs = {name: r["roc"] for name, r in results.items() if r["roc"] is not None}
        curves = {
            name: (np.array(r["grid"]), np.array([row["faithfulness"] for row in r["curve_rows"]]))
            for name, r in results.items()
        }
        run.csv("dataset.csv", pd.concat([r["frame"] for r in results.values()]))
        run.csv("edge_scores.csv", pd.DataFrame([row for r in results.values() for row in r["score_rows"]]))
        run.csv("faithfulness_curve.csv", pd.DataFrame(curve_rows))
        run.figure(
            "faithfulness_curve.png",
            plots.curves(
                curves,
                f"Faithfulness of top-k {method} circuits (held-out prompts, {ablation} ablation)",
                "edges kept (log scale)",
                "normalized faithfulness (1 = full model, 0 = corrupted)",
                logx=True,
                hlines={1.0: "full model", 0.0: "corrupted"},
            ),
        )
        mib = pd.DataFrame([row for r in results.values() for row in r["mib_rows"]])
        run.csv("mib_curve.csv", mib)
        run.csv("area.csv", pd.DataFrame([row for r in results.values() for row in r["area_rows"]]))
        run.figure(
            "mib_curve.png",
            plots.area_curves(
                mib,
                f"{method} circuits at MIB's sizes (held-out prompts, {ablation} ablation, pruned of dangling edges)",
            ),
        )
        if rocs:
            run.csv("roc.csv", pd.DataFrame(roc_rows))
            run.figure(
                "roc.png",
                plots.curves(
                    {k: (f, t) for k, (f, t, _) in rocs.items()},
                    "ROC against the canonical circuit",
                    "false positive rate",
                    "true positive rate",
                    diagonal=True,
                    labels={k: f"{k} (AUC {a:.3f})" for k, (_, _, a) in rocs.items()},
                ),
            )
        print(pd.DataFrame(curve_rows).groupby("task").tail(3).to_string(index=False, float_format="%.4f"))


def eap_task(
    lm,
    graph,
    run,
    name: str,
    opts,
    method: str,
    ig_steps: int,
    ks: list[int],
    threshold,
    ablation: str,
    n_random: int,
    export: str,
    ig_points: str = "right",
) -> dict:
    """One task: edge scores on discovery prompts, saved circuits and diagram, held-out curve, ROC."""
    from lib.io import diagram
    from lib.methods.area import mib_circuit_count, mib_curves
    from lib.methods.canonical import canonical_circuit
    from lib.methods.eap import edge_scores, edge_scores_per_prompt
    from lib.methods.faithfulness import (
        Evaluator,
        auc_interval,
        log_grid,
        roc_curve,
        top_k_mask,
    )

    # discovery prompts and disjoint held-out prompts for the faithfulness curve
    split = cli.task_split(run, name, lm.tokenizer, opts)
    discovery, held_out, frame = split.discovery, split.held_out, split.frame
    reference = canonical_circuit(name, graph, lm.name)
    with progress.bar(len(discovery), f"{name}: {method} scores", "prompt") as bar:  # per prompt for AUC intervals
        args = (lm, graph, discovery, opts.batch_size, method, ig_steps, bar, ig_points)
        scores, item_scores = edge_scores_per_prompt(*args) if reference is not None else (edge_scores(*args), None)
    exists = graph.edge_exists
    flat = scores[exists].numpy()
    rank = np.empty(len(flat), dtype=int)
    rank[np.argsort(-np.abs(flat), kind="stable")] = np.arange(1, len(flat) + 1)
    score_rows = []
    for e, s, r in zip(graph.edge_names, flat, rank):
        src, rcv = e.split("->")
        score_rows.append({"task": name, "edge": e, "source": src, "receiver": rcv, "score": s, "abs_rank": r})
    integrated = method in ("eap-ig", "eap-ig-activations")
    params = {
        "method": method,
        "ig_steps": ig_steps if integrated else None,
        "ig_points": ig_points if integrated else None,
        "n_prompts": len(discovery),
        "seed": opts.seed,
    }
    ev = Evaluator(lm, graph, held_out, ablation, opts.batch_size, opts.n_bootstrap, opts.seed)
    for k in ks:
        keep = top_k_mask(graph, scores, min(k, graph.n_edges))
        _save(run, graph, lm, name, method, {**params, "top_k": k}, keep, scores, f"circuit_{name}_top{k}.json", export)
        if lm.arch.post_norms and ablation == "resample":  # Gemma 2: the gap to EAP-IG's recomputed norms
            from lib.methods.post_norm_gap import faithfulness_gap

            gap = faithfulness_gap(lm, graph, held_out, keep, opts.batch_size, ev.clean, ev.corrupt, ev.metric(keep))
            run.record.setdefault("post_norm_gap", {}).setdefault(name, {})[f"top{k}"] = gap
    if threshold is not None:
        keep = (scores.abs() >= threshold) & exists
        if keep.any():
            _save(
                run,
                graph,
                lm,
                name,
                method,
                {**params, "threshold": threshold},
                keep,
                scores,
                f"circuit_{name}_threshold.json",
                export,
            )
    grid, curve_rows = log_grid(graph.n_edges), []
    with progress.bar(len(grid), f"{name}: faithfulness curve", "circuit") as bar:
        for k in grid:
            f = ev.faithfulness(top_k_mask(graph, scores, k))
            curve_rows.append({"task": name, "edges_kept": k, "ablation": ablation, "n_held_out": len(held_out), **f})
            bar.update(1)
    with progress.bar(mib_circuit_count(n_random), f"{name}: circuits at MIB's sizes", "circuit") as bar:
        curves = mib_curves(ev, graph, -scores, n_random, opts.seed, opts.n_bootstrap, progress=bar)
    mib_rows, area_rows = ([{"task": name, **r} for r in rows] for rows in curves)
    roc, roc_rows = None, []
    if reference is not None:
        assert item_scores is not None  # computed per prompt wherever there is a reference
        fpr, tpr, auc = roc_curve(graph, scores, reference)
        low, high = auc_interval(graph, item_scores, reference, opts.n_bootstrap, opts.seed)
        roc_rows = [
            {
                "task": name,
                "reference": "canonical",
                "reference_edges": int(reference.sum()),
                "fpr": a,
                "tpr": b,
                "auc": auc,
                "auc_ci_low": low,
                "auc_ci_high": high,
            }
            for a, b in zip(fpr, tpr)
        ]
        roc = (fpr, tpr, auc)
    top = top_k_mask(graph, scores, min(DIAGRAM_EDGES, graph.n_edges))
    edges = [(e.split("->")[0], e.split("->")[1], float(scores[graph.edge_index(e)])) for e in graph.edges_of(top)]
    title = f"{name}: top {int(top.sum())} edges by |{method} score|"
    run.figure(f"diagram_{name}.png", diagram.circuit_figure(edges, lm.n_layers, lm.n_heads, title, f"{method} score"))
    run.text(f"diagram_{name}.dot", diagram.circuit_dot(edges, lm.n_layers, lm.n_heads, title, f"{method} score"))
    return {
        "score_rows": score_rows,
        "curve_rows": curve_rows,
        "grid": grid,
        "roc_rows": roc_rows,
        "roc": roc,
        "frame": frame,
        "mib_rows": mib_rows,
        "area_rows": area_rows,
    }


def _save(run, graph, lm, task, method, params, keep, scores, filename, export: str):
    edges = {e: float(scores[graph.edge_index(e)]) for e in graph.edges_of(keep)}
    circuit = Circuit(lm.name, task, method, params, edges)
    run.json(filename, circuit.to_json(graph))
    if export == "eap-ig":  # the library's convention: higher = more important, so -our score
        run.json(filename.replace(".json", ".eap-ig.json"), eap_ig_json(graph, keep, -scores, lm.d_model, lm.name))


if __name__ == "__main__":
    cli.main(app)
