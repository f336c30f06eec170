"""ACDC (Conmy et al. 2023): circuits by pruning edges from the logits backwards at one or more
thresholds, with ROC against the canonical circuit and faithfulness vs edges kept on held-out prompts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from lib.core import choices
from lib.core.errors import UserError
from lib.io import checks, cli, interrupts, progress
from lib.io.circuit_json import Circuit, eap_ig_json
from lib.io.headline import Metric

app = cli.script_app(__doc__)
HEADLINE = [
    Metric("edges_kept@tau={tau:g}", "acdc_sweep.csv", "edges_kept", {"method": "acdc"}, by=("tau",)),
    Metric("faithfulness@tau={tau:g}", "acdc_sweep.csv", "faithfulness", {"method": "acdc"}, by=("tau",)),
    Metric("auc", "roc.csv", where={"method": "acdc"}, fn=lambda d: d.auc.iloc[0]),
    Metric("cpr@tau={tau:g}", "area.csv", "value", {"metric": "cpr", "method": "acdc"}, by=("tau",)),
    Metric("cmd@tau={tau:g}", "area.csv", "value", {"metric": "cmd", "method": "acdc"}, by=("tau",)),
]
CHECKPOINT_SECONDS = 15.0  # the search state is saved at least this often (and always on an interrupt)


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
    thresholds: Annotated[str, typer.Option("--thresholds", help="tau values, space-separated")] = "0.01",
    metric: Annotated[str, typer.Option(help="kl (KL(clean || circuit)) | task")] = "kl",
    ablation: Annotated[str, typer.Option(help="resample | mean | zero")] = "resample",
    absolute: Annotated[
        bool, typer.Option("--absolute/--no-absolute", help="threshold |metric change| instead of worsening")
    ] = False,
    n_random: Annotated[int, typer.Option("--n-random", help="random circuits per size for the area baseline")] = 10,
    prune_with: Annotated[
        str,
        typer.Option(
            "--prune-with",
            help="eap | eap-ig: score edges first and run ACDC over the kept ones only (the EAP paper's hybrid)",
        ),
    ] = "",
    prune_top: Annotated[int, typer.Option("--prune-top", help="with --prune-with: keep the top N edges")] = 0,
    prune_threshold: Annotated[
        float, typer.Option("--prune-threshold", help="with --prune-with: keep edges with |score| >= this")
    ] = float("nan"),
    plain: Annotated[
        bool,
        typer.Option(
            "--plain/--no-plain",
            help="with --prune-with: also run plain ACDC "
            "to compare (--no-plain: the hybrid only, e.g. on GPT-2 on a CPU)",
        ),
    ] = True,
    export: cli.ExportOpt = "",
    n_bootstrap: cli.NBootstrapOpt = 1000,
    quiet: cli.QuietOpt = False,
    resume: cli.ResumeOpt = None,
):
    taus = checks.parse_floats(thresholds, "--thresholds")
    if not taus or any(t < 0 for t in taus):
        raise UserError("--thresholds must be one or more non-negative numbers")
    if metric not in choices.ACDC_METRICS:
        raise UserError(f"unknown metric {metric!r}; choose from {', '.join(choices.ACDC_METRICS)}")
    if ablation not in choices.ABLATIONS:
        raise UserError(f"unknown ablation {ablation!r}; choose from {', '.join(choices.ABLATIONS)}")
    checks.check_export(export)
    checks.check_between(0, 1000, ("--n-random", n_random))
    check_pruning(prune_with, prune_top, prune_threshold, plain)
    opts = cli.common(
        tasks, model, device, dtype, n_prompts, batch_size, seed, out, quiet, n_bootstrap, task_metric=task_metric
    )
    # the work's imports, once the options are valid (--help and option errors never pay for them)
    import pandas as pd
    import torch

    from lib.core.graph import graph_of
    from lib.io import plots
    from lib.methods.acdc import ACDCState, edge_order, kept_mask, run_acdc
    from lib.methods.area import mib_circuit_count, mib_curves
    from lib.methods.canonical import canonical_circuit
    from lib.methods.faithfulness import Evaluator, roc_from_points, roc_point

    extra = dict(
        thresholds=taus,
        metric=metric,
        ablation=ablation,
        absolute=absolute,
        export=export,
        n_random=n_random,
        prune_with=prune_with,
        prune_top=prune_top,
        plain=plain,
        prune_threshold=None if np.isnan(prune_threshold) else prune_threshold,
    )
    with cli.experiment("06_acdc", opts, resume=resume, headline=HEADLINE, **extra) as (lm, run):
        graph = graph_of(lm)
        checks.check_edge_counts(graph, ("--prune-top", prune_top))
        rows, datasets = [], []
        timings = run.record.setdefault("seconds", {})  # wall time per task x tau (kept out of the CSVs)
        for name in opts.tasks:
            split = cli.task_split(run, name, lm.tokenizer, opts)
            discovery, held_out, frame = split.discovery, split.held_out, split.frame
            datasets.append(frame)
            ev, reference = None, canonical_circuit(name, graph, lm.name)
            candidates, pruned_label = None, ""
            if prune_with:
                candidates, pruned_label, scoring = prune_candidates(
                    lm, graph, run, name, discovery, opts, prune_with, prune_top, prune_threshold
                )
                ev = Evaluator(lm, graph, held_out, ablation, opts.batch_size, opts.n_bootstrap, opts.seed)
                rows.append(scored_row(name, pruned_label, candidates, ev, graph, reference, len(held_out), scoring))
            variants = ([("acdc", None)] if plain or not prune_with else []) + (
                [(f"acdc+{pruned_label}", candidates)] if prune_with else []
            )
            for tau, (method, cand) in [(t, v) for t in taus for v in variants]:
                unit = f"{name}_tau{tau:g}" + ("_pruned" if cand is not None else "")
                if (done := run.unit(unit)) is not None:
                    rows.append(done)
                    continue
                saved = run.unit(f"{unit}.state") or {}
                state = ACDCState(**saved["state"]) if saved else ACDCState(tau)
                t0 = time.time() - saved.get("seconds", 0.0)
                last_save = [time.monotonic()]

                def checkpoint(st, force=False, _unit=unit, _t0=t0, last_save=last_save):
                    if force or time.monotonic() - last_save[0] >= CHECKPOINT_SECONDS:
                        run.save_unit(f"{_unit}.state", {"state": dict(st.__dict__), "seconds": time.time() - _t0})
                        last_save[0] = time.monotonic()

                desc = f"{name} tau={tau:g}" + (f" {method}" if cand is not None else "")
                with progress.bar(len(edge_order(graph, cand)), f"{desc}: edges tried", "edge") as bar:
                    try:
                        state = run_acdc(
                            lm,
                            graph,
                            discovery,
                            tau,
                            metric,
                            ablation,
                            absolute,
                            opts.batch_size,
                            state=state,
                            checkpoint=checkpoint,
                            progress=bar,
                            candidates=cand,
                            critical=interrupts.deferred,
                        )
                    except KeyboardInterrupt:
                        checkpoint(state, force=True)
                        raise
                keep = kept_mask(graph, state)
                importance = torch.zeros(graph.n_sources, graph.n_receivers, dtype=torch.float64)  # [S, R]
                for e, worse in state.scores.items():  # each tried edge's worsening (MIB's sign); 0 untried
                    importance[graph.edge_index(e)] = worse
                circuit = Circuit(
                    lm.name,
                    name,
                    method,
                    {
                        "tau": tau,
                        "metric": metric,
                        "ablation": ablation,
                        "absolute": absolute,
                        "n_prompts": len(discovery),
                    },
                    {e: state.scores.get(e, float("nan")) for e in graph.edges_of(keep)},
                )
                if keep.any():  # plain: circuit_<task>_tau<tau>.json; pruned: circuit_<task>_tau<tau>_pruned.json
                    run.json(f"circuit_{unit}.json", circuit.to_json(graph))
                    if export == "eap-ig":  # the importance its MIB areas rank by, so MIB ranks the same way
                        run.json(
                            f"circuit_{unit}.eap-ig.json", eap_ig_json(graph, keep, importance, lm.d_model, lm.name)
                        )
                ev = ev or Evaluator(lm, graph, held_out, ablation, opts.batch_size, opts.n_bootstrap, opts.seed)
                f = ev.faithfulness(keep)
                row = {
                    "task": name,
                    "method": method,
                    "tau": tau,
                    "metric": metric,
                    "ablation": ablation,
                    "absolute": absolute,
                    "edges_kept": int(keep.sum()),
                    "nodes_kept": len(graph.nodes_of(keep)),
                    "edges_tried": state.tried,
                    "forward_passes": state.forward_passes,
                    "candidate_edges": int(graph.n_edges if cand is None else (cand & graph.edge_exists).sum()),
                    "trial_passes_saved": (graph.n_edges - len(edge_order(graph, cand)))
                    * -(-len(discovery) // opts.batch_size),
                    "final_metric_discovery": state.current,
                    "n_held_out": len(held_out),
                    **{k: v for k, v in f.items() if k.startswith("faithfulness")},
                    "tpr": np.nan,
                    "fpr": np.nan,
                    "reference_edges": np.nan,
                }
                if reference is not None:
                    row.update(roc_point(graph, keep, reference))
                with progress.bar(mib_circuit_count(n_random), f"{desc}: circuits at MIB's sizes", "circuit") as bar:
                    curve, areas = mib_curves(
                        ev, graph, importance, n_random, opts.seed, opts.n_bootstrap, progress=bar
                    )
                row["mib_curve"] = [{"task": name, "method": method, "tau": tau, **r} for r in curve]
                row["area"] = [{"task": name, "method": method, "tau": tau, **r} for r in areas]
                rows.append(row)
                timings[unit] = round(time.time() - t0, 3)
                run.save_unit(unit, row)
        mib = pd.DataFrame([r for row in rows for r in row["mib_curve"]])
        area_table = pd.DataFrame([r for row in rows for r in row["area"]])
        sweep = pd.DataFrame([{k: v for k, v in row.items() if k not in ("mib_curve", "area")} for row in rows])
        run.csv("mib_curve.csv", mib)
        run.csv("area.csv", area_table)
        run.figure(
            "mib_curve.png",
            plots.area_curves(
                mib.assign(task=[f"{t} {m} tau={u:g}" for t, m, u in zip(mib.task, mib.method, mib.tau)]),
                f"ACDC edges ranked by their worsening, at MIB's sizes ({ablation} ablation, pruned)",
            ),
        )
        run.csv("dataset.csv", pd.concat(datasets))
        run.csv("acdc_sweep.csv", sweep)
        by = ["task", "method"]
        label = (lambda k: f"{k[0]} {k[1]}") if prune_with else (lambda k: k[0])
        curves = {
            label(k): (d.edges_kept.to_numpy(), d.faithfulness.to_numpy())
            for k, d in sweep.sort_values("edges_kept").groupby(by, sort=False)
        }
        run.figure(
            "faithfulness_vs_edges.png",
            plots.curves(
                curves,
                f"ACDC circuits: faithfulness on held-out prompts ({ablation} ablation; one point per tau)",
                "edges kept (log scale)",
                "normalized faithfulness (1 = full model, 0 = corrupted)",
                logx=True,
                hlines={1.0: "full model", 0.0: "corrupted"},
            ),
        )
        with_ref = sweep.dropna(subset=["tpr"])
        if len(with_ref):
            roc_rows, rocs = [], {}
            for k, d in with_ref.groupby(by, sort=False):
                fpr, tpr, auc = roc_from_points(d.fpr, d.tpr)
                rocs[label(k)] = (fpr, tpr, auc)
                roc_rows += [{"task": k[0], "method": k[1], "fpr": a, "tpr": b, "auc": auc} for a, b in zip(fpr, tpr)]
            run.csv("roc.csv", pd.DataFrame(roc_rows))
            run.figure(
                "roc.png",
                plots.curves(
                    {k: (f, t) for k, (f, t, _) in rocs.items()},
                    "ACDC ROC against the canonical circuit (one point per tau)",
                    "false positive rate",
                    "true positive rate",
                    diagonal=True,
                    labels={k: f"{k} (AUC {a:.3f})" for k, (_, _, a) in rocs.items()},
                ),
            )
        shown = sweep.assign(
            seconds=[
                timings.get(f"{r.task}_tau{r.tau:g}" + ("_pruned" if "+" in r.method else ""), np.nan)
                for r in sweep.itertuples()
            ]
        )
        print(
            shown[
                ["task", "method", "tau", "edges_kept", "edges_tried", "forward_passes", "seconds", "faithfulness"]
            ].to_string(index=False, float_format="%.4f")
        )


def check_pruning(prune_with: str, prune_top: int, prune_threshold: float, plain: bool) -> None:
    if not prune_with:
        if prune_top or not np.isnan(prune_threshold) or not plain:
            raise UserError("--prune-top, --prune-threshold and --no-plain need --prune-with eap or eap-ig")
        return
    if prune_with not in ("eap", "eap-ig"):
        raise UserError(f"unknown --prune-with {prune_with!r}; choose from eap, eap-ig")
    if (prune_top > 0) == (not np.isnan(prune_threshold)):
        raise UserError("--prune-with needs exactly one of --prune-top N (N >= 1) and --prune-threshold x")
    if not np.isnan(prune_threshold) and (not np.isfinite(prune_threshold) or prune_threshold < 0):
        raise UserError("--prune-threshold must be a finite non-negative number")
    checks.check_at_least(0, ("--prune-top", prune_top))


def prune_candidates(lm, graph, run, name: str, discovery, opts, method: str, top: int, threshold: float):
    """(candidate mask, label, scoring record): the edges EAP or EAP-IG keeps on the discovery prompts
    (saved as a unit, so a resumed run tries the same edges)."""
    from lib.methods.eap import IG_STEPS, edge_scores, gradient_points
    from lib.methods.faithfulness import top_k_mask

    unit = f"{name}_prune"
    saved = run.unit(unit)
    if saved is None:
        with progress.bar(len(discovery), f"{name}: {method} scores for pruning", "prompt") as bar:
            scores = edge_scores(lm, graph, discovery, opts.batch_size, method, IG_STEPS, progress=bar)
        keep = top_k_mask(graph, scores, top) if top else (scores.abs() >= threshold) & graph.edge_exists
        n_batches = -(-len(discovery) // opts.batch_size)
        points = len(gradient_points(graph, method, IG_STEPS))  # per batch: a corrupted pass, then 1 fwd + 1 bwd each
        saved = {
            "candidates": keep,
            "label": f"{method}-top{top}" if top else f"{method}>={threshold:g}",
            "scoring": {"forward_passes": n_batches * (1 + points), "backward_passes": n_batches * points},
        }
        run.save_unit(unit, saved)
    if not saved["candidates"].any():
        raise UserError(f"task {name}: --prune-threshold keeps no edge (the largest |score| is below it)")
    return saved["candidates"], saved["label"], saved["scoring"]


def scored_row(name, label, keep, ev, graph, reference, n_held_out, scoring) -> dict:
    """The pruning method alone (its candidate set as the circuit), next to ACDC and the hybrid."""
    from lib.methods.faithfulness import roc_point

    f = ev.faithfulness(keep)
    row = {
        "task": name,
        "method": label,
        "tau": np.nan,
        "edges_kept": int(keep.sum()),
        "nodes_kept": len(graph.nodes_of(keep)),
        "edges_tried": 0,
        "forward_passes": scoring["forward_passes"],
        "backward_passes": scoring["backward_passes"],
        "candidate_edges": int(keep.sum()),
        "trial_passes_saved": 0,
        "n_held_out": n_held_out,
        **{k: v for k, v in f.items() if k.startswith("faithfulness")},
        "tpr": np.nan,
        "fpr": np.nan,
        "reference_edges": np.nan,
        "mib_curve": [],
        "area": [],
    }
    if reference is not None:
        row.update(roc_point(graph, keep, reference))
    return row


if __name__ == "__main__":
    cli.main(app)
