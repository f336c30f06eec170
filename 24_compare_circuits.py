"""Compare circuits: from files (--circuits), or discovered here with EAP, EAP-IG (top-k) and ACDC (each
--thresholds tau). Edge and node Jaccard between them, overlap with the canonical circuit where one is
published, held-out faithfulness, how size and faithfulness move with k (and where the node set stops
changing), and stability: the fraction of bootstrap resamples of the discovery prompts that keep each edge."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from lib.core.errors import UserError
from lib.io import checks, cli, progress
from lib.io.circuit_json import Circuit
from lib.io.headline import Metric

app = cli.script_app(__doc__)
HEADLINE = [
    Metric("mean_pairwise_edge_jaccard", "pairwise.csv", fn=lambda rows: float(rows.edge_jaccard.mean())),
    Metric("stable_edges_{method}", "stability_summary.csv", "edges_in_every_resample", by=("method",)),
]
SCORED = ("eap", "eap-ig")


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
    circuits: Annotated[
        str,
        typer.Option(
            "--circuits", help="circuit JSON files, space-separated (default: discover with EAP, EAP-IG and ACDC)"
        ),
    ] = "",
    top_k: Annotated[int, typer.Option("--top-k", help="edges kept by EAP and EAP-IG")] = 50,
    thresholds: Annotated[str, typer.Option("--thresholds", help="ACDC tau values, space-separated")] = "0.01",
    ig_steps: Annotated[int, typer.Option("--ig-steps", help="EAP-IG integration steps")] = 5,
    n_resamples: Annotated[int, typer.Option("--n-resamples", help="bootstrap prompt sets for stability")] = 50,
    n_bootstrap: cli.NBootstrapOpt = 1000,
    quiet: cli.QuietOpt = False,
    resume: cli.ResumeOpt = None,
):
    files = [Path(p) for p in circuits.split()]
    for f in files:
        Circuit.read(f)  # each file parses and has edges before any model is loaded
    checks.check_at_least(1, ("--top-k", top_k))
    checks.check_between(1, 1000, ("--ig-steps", ig_steps))
    checks.check_between(2, 1000, ("--n-resamples", n_resamples))
    taus = checks.parse_floats(thresholds, "--thresholds")
    if files and len(files) < 2:
        raise UserError("--circuits needs at least two files to compare (or none, to discover them here)")
    if not files and (not taus or min(taus) < 0):
        raise UserError("--thresholds must be one or more non-negative numbers")
    opts = cli.common(
        tasks, model, device, dtype, n_prompts, batch_size, seed, out, quiet, n_bootstrap, task_metric=task_metric
    )
    # the work's imports, once the options are valid (--help and option errors never pay for them)
    from lib.core.graph import graph_of

    extra = dict(
        circuits=[str(f) for f in files], top_k=top_k, thresholds=taus, ig_steps=ig_steps, n_resamples=n_resamples
    )
    with cli.experiment("24_compare_circuits", opts, resume=resume, headline=HEADLINE, **extra) as (lm, run):
        graph = graph_of(lm)
        loaded = {f"file:{f.name}": Circuit.load(f, graph).mask(graph) for f in files}
        checks.check_edge_counts(graph, ("--top-k", top_k))
        results = cli.per_task(
            run,
            opts.tasks,
            lambda name: compare_task(lm, run, graph, name, opts, loaded, top_k, taus, ig_steps, n_resamples),
        )
        write(run, graph, results)


def compare_task(
    lm, run, graph, name: str, opts, loaded: dict, top_k: int, taus: list[float], ig_steps: int, n_resamples: int
) -> dict:
    from lib.methods import comparison, intervals
    from lib.methods.acdc import edge_order, kept_mask, run_acdc
    from lib.methods.canonical import canonical_circuit
    from lib.methods.eap import edge_scores_per_prompt
    from lib.methods.faithfulness import Evaluator, log_grid, top_k_mask

    split = cli.task_split(run, name, lm.tokenizer, opts)
    discovery, held_out, frame = split.discovery, split.held_out, split.frame
    circuits, items, sensitivity, stability_rows, stability_summary = dict(loaded), {}, [], [], []
    if not loaded:
        for method in SCORED:
            with progress.bar(len(discovery), f"{name}: {method} scores", "prompt") as bar:
                _, items[method] = edge_scores_per_prompt(lm, graph, discovery, opts.batch_size, method, ig_steps, bar)
            circuits[f"{method}-top{top_k}"] = top_k_mask(graph, items[method].double().mean(0), top_k)
        for tau in taus:
            with progress.bar(len(edge_order(graph)), f"{name}: ACDC tau={tau:g}", "edge") as bar:
                state = run_acdc(lm, graph, discovery, tau, batch_size=opts.batch_size, progress=bar)
            circuits[f"acdc@{tau:g}"] = kept_mask(graph, state)
    ev = Evaluator(lm, graph, held_out, "resample", opts.batch_size, opts.n_bootstrap, opts.seed)
    reference = canonical_circuit(name, graph, lm.name)
    rows = []
    for label, keep in circuits.items():
        row = {
            "task": name,
            "circuit": label,
            "edges": int(keep.sum()),
            "nodes": len(graph.nodes_of(keep)),
            "n_held_out": len(held_out),
        }
        row |= {k: v for k, v in ev.faithfulness(keep).items() if k.startswith("faithfulness")}
        if reference is not None:
            row |= comparison.overlap(graph, keep, reference)
        rows.append(row)
    edge_j, node_j = comparison.pairwise(graph, circuits)
    labels = list(circuits)
    pairs = [
        {"task": name, "a": labels[i], "b": labels[j], "edge_jaccard": edge_j[i, j], "node_jaccard": node_j[i, j]}
        for i in range(len(labels))
        for j in range(i + 1, len(labels))
    ]
    grid = log_grid(graph.n_edges)
    idx = comparison.bootstrap_indices(len(discovery), n_resamples, opts.seed)
    for method, per_prompt in items.items():
        mean = per_prompt.double().mean(0)
        keeps = [top_k_mask(graph, mean, k) for k in grid]
        metric = ev.metrics(keeps)  # [K, N] per-prompt metrics, several circuits per forward pass
        previous = set()
        for k, keep, m in zip(grid, keeps, metric):
            nodes = comparison.node_set(graph, keep)
            f = intervals.ratio_of_means(m, ev.clean, ev.corrupt)
            sensitivity.append(
                {
                    "task": name,
                    "method": method,
                    "k": k,
                    "nodes": len(nodes),
                    "new_nodes": len(nodes - previous),
                    "faithfulness": f,
                }
            )
            previous = nodes
        stable_from = comparison.node_set_stable_from(graph, grid, keeps)
        share = comparison.stability(graph, per_prompt, top_k, idx)  # [S, R]
        kept = circuits[f"{method}-top{top_k}"]
        for s, r in zip(*share.nonzero(as_tuple=True)):
            stability_rows.append(
                {
                    "task": name,
                    "method": method,
                    "edge": f"{graph.sources[s]}->{graph.receivers[r]}",
                    "share_of_resamples": float(share[s, r]),
                    "in_circuit": bool(kept[s, r]),
                }
            )
        stability_summary.append(
            {
                "task": name,
                "method": method,
                "top_k": top_k,
                "n_resamples": n_resamples,
                "edges_in_every_resample": int((share == 1).sum()),
                "edges_in_any_resample": int((share > 0).sum()),
                "mean_share_of_circuit_edges": float(share[kept].mean()),
                "node_set_stable_from_k": stable_from,
            }
        )
    return {
        "circuits": rows,
        "pairs": pairs,
        "matrices": (labels, edge_j, node_j),
        "sensitivity": sensitivity,
        "stability": stability_rows,
        "stability_summary": stability_summary,
        "frame": frame,
        "masks": {label: graph.edges_of(keep) for label, keep in circuits.items()},
    }


def write(run, graph, results: dict) -> None:
    import pandas as pd

    from lib.io import plots

    run.csv("dataset.csv", pd.concat([r["frame"] for r in results.values()]))
    run.csv("circuits.csv", pd.DataFrame([row for r in results.values() for row in r["circuits"]]))
    run.csv(
        "pairwise.csv",
        pd.DataFrame(
            [row for r in results.values() for row in r["pairs"]],
            columns=["task", "a", "b", "edge_jaccard", "node_jaccard"],
        ),
    )
    sensitivity = pd.DataFrame(
        [row for r in results.values() for row in r["sensitivity"]],
        columns=["task", "method", "k", "nodes", "new_nodes", "faithfulness"],
    )
    stability = pd.DataFrame(
        [row for r in results.values() for row in r["stability"]],
        columns=["task", "method", "edge", "share_of_resamples", "in_circuit"],
    )
    summary = pd.DataFrame(
        [row for r in results.values() for row in r["stability_summary"]],
        columns=[
            "task",
            "method",
            "top_k",
            "n_resamples",
            "edges_in_every_resample",
            "edges_in_any_resample",
            "mean_share_of_circuit_edges",
            "node_set_stable_from_k",
        ],
    )
    run.csv("sensitivity.csv", sensitivity)
    run.csv("stability.csv", stability)
    run.csv("stability_summary.csv", summary)
    for name, r in results.items():
        run.json(f"circuits_{name}.json", r["masks"])
        labels, edge_j, node_j = r["matrices"]
        both = np.triu(edge_j) + np.tril(node_j, -1)  # upper triangle: edges; lower: nodes
        run.figure(
            f"jaccard_{name}.png",
            plots.matrix(
                both,
                labels,
                labels,
                f"{name}: Jaccard similarity of circuits (above the diagonal: edges; below: nodes)",
                "Jaccard (1 = identical)",
                vmin=0.0,
                vmax=1.0,
            ),
        )
    if len(sensitivity):
        panels = {
            f"{t} {m}": (g.k.to_numpy(), g.faithfulness.to_numpy())
            for (t, m), g in sensitivity.groupby(["task", "method"], sort=False)
        }
        run.figure(
            "sensitivity.png",
            plots.curves(
                panels,
                "Held-out faithfulness as the top-k circuit grows",
                "edges kept (k, log scale)",
                "normalized faithfulness",
                logx=True,
                hlines={1.0: "full model", 0.0: "corrupted"},
            ),
        )
        run.figure(
            "stability_hist.png",
            plots.histograms(
                {
                    t: {m: g.share_of_resamples.to_numpy() for m, g in part.groupby("method", sort=False)}
                    for t, part in stability.groupby("task", sort=False)
                },
                f"Share of bootstrap prompt sets whose top-{summary.top_k.iloc[0]} circuit keeps each edge (edges kept at "
                "least once)",
                "share of resamples keeping the edge",
                ylabel="edges",
            ),
        )
    print(
        pd.DataFrame([row for r in results.values() for row in r["circuits"]])[
            ["task", "circuit", "edges", "nodes", "faithfulness"]
        ].to_string(index=False, float_format="%.3f")
    )
    if len(summary):
        print(summary.to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    cli.main(app)
