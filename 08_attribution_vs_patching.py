"""How good is the linear approximation? Every edge's exact effect (ablating that edge alone) next to its EAP
and EAP-IG scores (Syed, Rager & Conmy 2023, section 5): correlations, R^2 and the line of best fit, top-k
agreement, the worst outliers with the metric along their interpolation, and the same at node level against
activation patching."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from lib.io import checks, cli, progress
from lib.io.headline import Metric

app = cli.script_app(__doc__)
HEADLINE = [
    Metric("r2_{method}", "agreement.csv", "r2", {"level": "edge"}, by=("method",)),
    Metric("spearman_{method}", "agreement.csv", "spearman", {"level": "edge"}, by=("method",)),
]
LAMBDAS = [i / 10 for i in range(11)]


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
    sample: Annotated[
        int, typer.Option("--sample", help="edges to patch exactly, stratified by |EAP| rank (0: every edge)")
    ] = 0,
    ig_steps: Annotated[int, typer.Option("--ig-steps", help="EAP-IG integration steps")] = 5,
    curves: Annotated[int, typer.Option("--curves", help="largest outliers whose interpolation is traced")] = 5,
    rows_per_pass: cli.RowsPerPassOpt = None,
    n_bootstrap: cli.NBootstrapOpt = 1000,
    quiet: cli.QuietOpt = False,
    resume: cli.ResumeOpt = None,
):
    checks.check_at_least(0, ("--sample", sample))
    checks.check_between(0, 1000, ("--curves", curves))
    checks.check_between(1, 1000, ("--ig-steps", ig_steps))
    checks.check_rows_per_pass(rows_per_pass)
    opts = cli.common(
        tasks, model, device, dtype, n_prompts, batch_size, seed, out, quiet, n_bootstrap, task_metric=task_metric
    )
    # the work's imports, once the options are valid (--help and option errors never pay for them)
    import pandas as pd

    from lib.core.graph import graph_of

    with cli.experiment(
        "08_attribution_vs_patching",
        opts,
        resume=resume,
        headline=HEADLINE,
        sample=sample,
        ig_steps=ig_steps,
        curves=curves,
        rows_per_pass=rows_per_pass,
    ) as (lm, run):
        graph = graph_of(lm)
        checks.check_edge_counts(graph, ("--sample", sample))
        datasets = cli.task_builds(lm, opts)
        results = cli.per_task(
            run,
            opts.tasks,
            lambda name: compare_task(
                lm, graph, name, datasets[name], opts, sample, ig_steps, curves, rows_per_pass or lm.rows_per_pass
            ),
        )
        frames = {
            k: pd.concat([r[k] for r in results.values()], ignore_index=True)
            for k in ("edges", "agreement", "outliers", "curves", "nodes")
        }
        run.csv("dataset.csv", pd.concat([d.dataset_frame(lm.tokenizer) for d in datasets.values()]))
        for key, frame in frames.items():
            run.csv(f"{key}.csv", frame)
        write_figures(run, frames)
        print(
            frames["agreement"][["task", "level", "method", "n_edges", "pearson", "spearman", "r2", "slope"]].to_string(
                index=False, float_format="%.3f"
            )
        )


def compare_task(
    lm, graph, name: str, data, opts, sample: int, ig_steps: int, n_curves: int, rows_per_pass: int
) -> dict:
    import pandas as pd

    from lib.core.forward import answer_logits
    from lib.core.metrics import data_metric
    from lib.methods import agreement, intervals
    from lib.methods.canonical import canonical_circuit
    from lib.methods.eap import edge_scores
    from lib.methods.node_patching import data_patch_metrics, heads_and_mlps

    clean = data_metric(answer_logits(lm, data.clean, data.answer_pos, opts.batch_size), data).numpy()
    with progress.bar(2 * len(data), f"{name}: EAP and EAP-IG scores", "prompt") as bar:
        scores = {
            "eap": edge_scores(lm, graph, data, opts.batch_size, "eap", progress=bar),
            "eap-ig": edge_scores(lm, graph, data, opts.batch_size, "eap-ig", ig_steps, progress=bar),
        }
    exists = graph.edge_exists
    all_edges = exists.nonzero().tolist()
    eap_flat = scores["eap"][exists].numpy()
    chosen = agreement.stratified_sample(eap_flat, sample, opts.seed) if sample else np.arange(len(all_edges))
    edges = [tuple(all_edges[i]) for i in chosen]
    n_batches = -(-len(data) // opts.batch_size)
    with progress.bar(
        len(edges) * n_batches, f"{name}: exact single-edge effects x {n_batches} batches", "edge"
    ) as bar:
        exact = agreement.exact_effects(
            lm, graph, data, edges, clean, "resample", opts.batch_size, rows_per_pass, progress=bar
        )
    exact_mean = exact.mean(1)
    low, high = intervals.interval(intervals.mean, exact, n_resamples=opts.n_bootstrap, seed=opts.seed)
    reference = canonical_circuit(name, graph, lm.name)
    names = [f"{graph.sources[s]}->{graph.receivers[r]}" for s, r in edges]
    edge_frame = pd.DataFrame(
        {
            "task": name,
            "edge": names,
            "exact": exact_mean,
            "exact_ci_low": low,
            "exact_ci_high": high,
            **{m: [float(v[s, r]) for s, r in edges] for m, v in scores.items()},
            "in_canonical": [bool(reference[s, r]) if reference is not None else False for s, r in edges],
        }
    )
    rows, outliers = [], []
    for method in scores:
        est = edge_frame[method].to_numpy()
        rows.append({"task": name, "level": "edge", "method": method, **agreement.agreement(est, exact_mean)})
        err = edge_frame.assign(error=est - exact_mean, abs_error=np.abs(est - exact_mean))
        worst = err.sort_values("abs_error", ascending=False).head(10)
        outliers += [
            {"task": name, "method": method, "edge": w.edge, "estimate": w[method], "exact": w.exact, "error": w.error}
            for _, w in worst.iterrows()
        ]
    worst = edge_frame.assign(e=np.abs(edge_frame["eap"] - exact_mean)).sort_values("e", ascending=False).head(n_curves)
    curve_rows = []
    if len(worst):
        idx = [edges[i] for i in worst.index]
        traced = agreement.interpolation(lm, graph, data, idx, LAMBDAS, "resample", opts.batch_size)
        for j, (_, w) in enumerate(worst.iterrows()):
            for lam, m in zip(LAMBDAS, traced[j]):
                curve_rows.append(
                    {
                        "task": name,
                        "edge": w.edge,
                        "lambda": lam,
                        "metric": m,
                        "linear_eap": clean.mean() + lam * w["eap"],
                        "linear_eap_ig": clean.mean() + lam * w["eap-ig"],
                    }
                )
    comps = heads_and_mlps(lm.n_layers, lm.n_heads)
    patched = data_patch_metrics(lm, data, comps, "noise", opts.batch_size, rows_per_pass)
    node_exact = (patched - clean[None]).mean(1)
    rows_idx = [graph.source_index[c.name] for c in comps]
    node_frame = pd.DataFrame(
        {
            "task": name,
            "node": [c.name for c in comps],
            "exact": node_exact,
            **{m: v.sum(1).numpy()[rows_idx] for m, v in scores.items()},
        }
    )
    for method in scores:
        rows.append(
            {
                "task": name,
                "level": "node",
                "method": method,
                **agreement.agreement(node_frame[method].to_numpy(), node_exact, ks=(5, 10)),
            }
        )
    return {
        "edges": edge_frame,
        "agreement": pd.DataFrame(rows),
        "outliers": pd.DataFrame(outliers),
        "curves": pd.DataFrame(curve_rows, columns=["task", "edge", "lambda", "metric", "linear_eap", "linear_eap_ig"]),
        "nodes": node_frame,
    }


def write_figures(run, frames: dict) -> None:
    from lib.io import plots

    fits = frames["agreement"].set_index(["task", "level", "method"])
    for task, edges in frames["edges"].groupby("task", sort=False):
        panels = {}
        for method in ("eap", "eap-ig"):
            f = fits.loc[(task, "edge", method)]
            panels[f"{method} (R² {f.r2:.2f}, Spearman {f.spearman:.2f})"] = (
                edges[method].to_numpy(),
                edges.exact.to_numpy(),
                edges.in_canonical.to_numpy(),
                (f.slope, f.intercept),
            )
        run.figure(
            f"scatter_{task}.png",
            plots.fit_scatter(
                panels,
                f"{task}: attribution score vs exact effect of ablating the edge alone (one dot per edge)",
                "attribution score (linear estimate)",
                "exact effect: metric(edge ablated) − metric(clean)",
            ),
        )
    for task, c in frames["curves"].groupby("task", sort=False):
        pairs = {
            edge: (g["lambda"].to_numpy(), g.metric.to_numpy(), g.linear_eap.to_numpy())
            for edge, g in c.groupby("edge", sort=False)
        }
        run.figure(
            f"interpolation_{task}.png",
            plots.paired_curves(
                pairs,
                f"{task}: the metric as the worst-estimated edges move from clean (0) to ablated (1)",
                "lambda (fraction of the edge ablated)",
                "task metric (mean over prompts)",
                "exact",
                "EAP's linear estimate",
            ),
        )
    nodes = frames["nodes"]
    node_fits = frames["agreement"][frames["agreement"].level == "node"].set_index(["task", "method"])
    panels = {
        f"{t} eap (R² {node_fits.loc[(t, 'eap')].r2:.2f})": (
            g["eap"].to_numpy(),
            g.exact.to_numpy(),
            None,
            (node_fits.loc[(t, "eap")].slope, node_fits.loc[(t, "eap")].intercept),
        )
        for t, g in nodes.groupby("task", sort=False)
    }
    run.figure(
        "nodes.png",
        plots.fit_scatter(
            panels,
            "Nodes: attribution patching vs activation patching (noise)",
            "attribution score (sum of the node's edges)",
            "exact effect of patching the node",
            points="nodes",
        ),
    )


if __name__ == "__main__":
    cli.main(app)
