"""Attribution graphs over transcoders (circuit tracing, as circuit-tracer computes them): per prompt, the
direct-effect graph of the frozen local replacement model, pruned, with its replacement and completeness
scores; and how faithful the graphs are: interventions in the real model against the graph's predictions,
error compounding as layers are replaced (per-layer against cross-layer transcoders), sensitivity to the
pruning threshold, and the task's recurring graph features as a circuit under mean ablation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from lib.core import choices
from lib.core.errors import UserError
from lib.io import checks, cli, progress
from lib.io.headline import Metric

app = cli.script_app(__doc__)
HEADLINE = [
    Metric("replacement_score", "scores_summary.csv", "replacement_full"),
    Metric("completeness_score", "scores_summary.csv", "completeness_full"),
    Metric("intervention_gap_mean_abs", "interventions_summary.csv", "abs_gap"),
    Metric("attention_gap_mean_abs", "interventions_summary.csv", "abs_gap_attention"),
    Metric("task_circuit_faithfulness", "task_circuit.csv", "faithfulness"),
]
SWEEP = "0.5 0.6 0.7 0.8 0.9 0.95 0.99"


@app.command()
def main(
    tasks: cli.TasksOpt = "all",
    model: cli.ModelOpt = "gpt2",
    device: cli.DeviceOpt = "auto",
    dtype: cli.DtypeOpt = "float32",
    n_prompts: cli.NPromptsOpt = 40,
    batch_size: cli.BatchOpt = 16,
    seed: cli.SeedOpt = 0,
    out: cli.OutOpt = Path("results"),
    task_metric: cli.TaskMetricOpt = "",
    dictionaries: cli.DictionariesOpt = "toy",
    transcoders: Annotated[
        str,
        typer.Option(
            help="plt (per-layer transcoders) | clt (a cross-layer transcoder): the replacement model of the graphs; "
            "or, as circuit-tracer's transcoder_name, a set (gemma, llama, a hub repo id, a local folder) in place "
            "of --dictionaries, its kind read from it"
        ),
    ] = "plt",
    n_graphs: Annotated[int, typer.Option("--n-graphs", help="graphs per task (its first discovery prompts)")] = 8,
    node_threshold: Annotated[
        float, typer.Option("--node-threshold", help="cumulative influence kept by pruning (circuit-tracer's default)")
    ] = 0.8,
    edge_threshold: Annotated[float, typer.Option("--edge-threshold", help="cumulative edge score kept")] = 0.98,
    sweep: Annotated[str, typer.Option(help="node thresholds of the sensitivity sweep")] = SWEEP,
    max_feature_nodes: Annotated[
        int,
        typer.Option(
            "--max-feature-nodes", help="feature rows per graph, the most influential first (0: every active feature)"
        ),
    ] = 0,
    max_n_logits: Annotated[int, typer.Option("--max-n-logits", help="logit nodes at most")] = 10,
    desired_logit_prob: Annotated[
        float, typer.Option("--desired-logit-prob", help="logit nodes until their probability reaches this")
    ] = 0.95,
    target_batch: Annotated[int, typer.Option("--target-batch", help="target rows per backward pass")] = 64,
    n_intervene: Annotated[int, typer.Option("--n-intervene", help="top graph features intervened on per graph")] = 5,
    min_frequency: Annotated[
        float,
        typer.Option(
            "--min-frequency", help="share of a task's pruned graphs a node must be in to join the task's circuit"
        ),
    ] = 0.5,
    n_bootstrap: cli.NBootstrapOpt = 1000,
    quiet: cli.QuietOpt = False,
    resume: cli.ResumeOpt = None,
):
    kind = transcoders
    if transcoders not in choices.GRAPH_TRANSCODERS:  # circuit-tracer's transcoder_name: the set itself
        if not choices.is_set_name(transcoders):
            raise UserError(
                f"unknown --transcoders {transcoders!r}; choose from {', '.join(choices.GRAPH_TRANSCODERS)}, or name "
                "a set as circuit-tracer does (gemma, llama, a hub repo id, a local folder)"
            )
        if dictionaries != "toy":
            raise UserError(
                f"--transcoders {transcoders} names a set and --dictionaries {dictionaries} another; give the set once"
            )
        dictionaries, kind = transcoders, ""  # the kind is the set's
    checks.check_between(1, 1000, ("--n-graphs", n_graphs))
    checks.check_between(1, 100, ("--max-n-logits", max_n_logits), ("--n-intervene", n_intervene))
    checks.check_between(1, 4096, ("--target-batch", target_batch))
    checks.check_between(0, 1 << 24, ("--max-feature-nodes", max_feature_nodes))
    thresholds = checks.parse_floats(sweep, "--sweep")
    for name, value in (
        ("--node-threshold", node_threshold),
        ("--edge-threshold", edge_threshold),
        ("--desired-logit-prob", desired_logit_prob),
        ("--min-frequency", min_frequency),
        *(("--sweep", t) for t in thresholds),
    ):
        checks.check_finite(name, value)
        if not 0 <= value <= 1:
            raise UserError(f"{name} must be between 0 and 1 (got {value:g})")
    checks.check_at_least(1, ("--n-prompts", n_prompts))  # before it is compared with --n-graphs
    if n_graphs > n_prompts:
        raise UserError(
            f"--n-graphs {n_graphs} is more than --n-prompts {n_prompts} (graphs are built on the discovery prompts)"
        )
    opts = cli.common(
        tasks, model, device, dtype, n_prompts, batch_size, seed, out, quiet, n_bootstrap, task_metric=task_metric
    )
    import pandas as pd

    from lib.features import files
    from lib.features.replacement import frozen_parts
    from lib.io import graph_json
    from lib.io.graph_report import plot_task, summaries, transcoder_sets

    raw = files.read_set(files.resolve(dictionaries))  # before the model: its format says how to load the model
    if not kind:
        from lib.features.transcoders import TranscoderSet

        kinds = {d.kind for d in raw.values() if isinstance(d, TranscoderSet)}
        kind = kinds.pop() if len(kinds) == 1 else "plt"
    extra = dict(
        dictionaries=dictionaries,
        transcoders=kind,
        n_graphs=n_graphs,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
        sweep=sorted(set(thresholds) | {node_threshold}),
        max_feature_nodes=max_feature_nodes or None,
        max_n_logits=max_n_logits,
        desired_logit_prob=desired_logit_prob,
        target_batch=target_batch,
        n_intervene=n_intervene,
        min_frequency=min_frequency,
    )
    opts = dataclasses.replace(opts, processing=files.processing_of(raw, dictionaries))
    with cli.experiment("10_attribution_graphs", opts, resume=resume, headline=HEADLINE, **extra) as (lm, run):
        sets = transcoder_sets(files.fit(raw, lm), lm, dictionaries, kind)
        run.record["transcoder_sets"] = {
            k: {
                "name": tc.name,
                "architecture": tc.architecture,
                "k": tc.k,
                "d_sae": tc.d_sae,
                "hooks_in": tc.hooks_in,
                "hooks_out": tc.hooks_out,
                "format": tc.cfg.get(
                    "format", "this project's (SAELens layout per layer, circuit-tracer's CLT layout)"
                ),
                "model_processing": lm.processing,  # the activations the set reads (lib.features.files.processing_of)
                "skip_connection": tc.W_skip is not None,
            }
            for k, tc in sets.items()
        }
        run.record["frozen_for_attribution"] = frozen_parts(lm)
        run.record["not_available"] = {
            k: "not in the dictionary set" for k in choices.GRAPH_TRANSCODERS if k not in sets
        }
        results = cli.per_task(run, opts.tasks, lambda name: graph_task(lm, run, name, opts, sets, extra))
        run.record["graph_seconds"] = {name: res["seconds"] for name, res in results.items()}
        run.json(
            "graphs/graph-metadata.json",
            graph_json.metadata_index([m for res in results.values() for m in res["graph_metadata"]]),
        )
        tables = {
            t: pd.DataFrame([r for res in results.values() for r in res[t]])
            for t in ("scores", "interventions", "compounding", "sensitivity", "task_features", "task_circuit")
        }
        run.csv("dataset.csv", pd.concat([res["frame"] for res in results.values()]))
        for name, table in tables.items():
            run.csv(f"{name}.csv", table)
        for name, table in summaries(tables, opts).items():
            run.csv(f"{name}.csv", table)
        for name in opts.tasks:
            for file, fig in plot_task(name, tables, extra).items():
                run.figure(file, fig)
        print(
            tables["scores"]
            .groupby("task", sort=False)[["replacement_full", "completeness_full", "features_pruned", "edges_pruned"]]
            .mean()
            .to_string(float_format="%.3f")
        )


def graph_task(lm, run, name: str, opts, sets: dict, extra: dict) -> dict:
    """One task: graphs of its first --n-graphs discovery prompts (written as frontend JSON, npz, PNG and DOT),
    their scores, sensitivity and interventions; compounding and the task circuit on held-out prompts."""
    import time

    import numpy as np

    from lib.features import graph_checks as checks
    from lib.features.attribution import attribute, memory_estimate, metric_direction
    from lib.features.influence import logit_weights, prune
    from lib.io.graph_report import feature_labels, task_circuit, write_graph

    def enough_graphs(split):
        if extra["n_graphs"] > len(split.discovery):
            raise UserError(
                f"--n-graphs {extra['n_graphs']}: task {name} has {len(split.discovery)} discovery prompts "
                f"(raise --n-prompts or lower --n-graphs)"
            )

    split = cli.task_split(run, name, lm.tokenizer, opts, check=enough_graphs)
    discovery, held_out, frame = split.discovery, split.held_out, split.frame
    n_ctx = int(lm.bridge.cfg.n_ctx)
    longest = int(discovery.lengths[: extra["n_graphs"]].max())
    if max(longest, int(held_out.lengths.max())) > n_ctx:
        raise UserError(
            f"task {name}: a prompt of {max(longest, int(held_out.lengths.max()))} tokens is longer than "
            f"model {lm.name}'s context of {n_ctx}"
        )
    tc = sets[extra["transcoders"]]
    w_u = lm.bridge.W_U.detach()
    estimate = memory_estimate(
        lm,
        tc,
        discovery.clean[int(discovery.lengths[: extra["n_graphs"]].argmax()), :longest],
        extra["target_batch"],
        extra["max_feature_nodes"],
        extra["max_n_logits"],
    )
    progress.note(f"{name}: memory estimate for its longest graph ({longest} tokens): {estimate}")
    rows = {"scores": [], "interventions": [], "sensitivity": []}
    counts: dict = {}
    timings = []  # seconds per graph: in run.json, not in a CSV (the same seed gives byte-identical CSVs)
    metadata = []  # each graph's frontend metadata, for graphs/graph-metadata.json
    labels = feature_labels(lm, tc)
    with progress.bar(extra["n_graphs"], f"{name}: attribution graphs ({tc.kind})", "graph") as bar:
        for i in range(extra["n_graphs"]):
            tokens = discovery.clean[i, : int(discovery.lengths[i])]
            direction = metric_direction(w_u, discovery.correct[i].to(w_u.device), discovery.wrong[i].to(w_u.device))
            t0 = time.perf_counter()
            graph = attribute(
                lm,
                tc,
                tokens,
                direction,
                extra["max_n_logits"],
                extra["desired_logit_prob"],
                extra["target_batch"],
                extra["max_feature_nodes"],
            )
            seconds = time.perf_counter() - t0
            weights = logit_weights(graph.adjacency.shape[0], graph.logit_probs)
            pruned = prune(
                graph.adjacency,
                weights,
                graph.n_features,
                graph.n_pos,
                graph.n_logits,
                extra["node_threshold"],
                extra["edge_threshold"],
            )
            slug = f"{name}_{i}"
            metadata.append(write_graph(run, lm, graph, pruned, slug, extra, labels))
            top = int(graph.logit_tokens[0])
            full = checks.full_scores(graph, weights)
            rows["scores"].append(
                {
                    "task": name,
                    "graph": slug,
                    "prompt": discovery.info.clean_text.iloc[i],
                    "positions": graph.n_pos,
                    "active_features": len(graph.active),
                    **checks.graph_scores(graph, weights, pruned, full),
                    "logit_nodes": graph.n_logits,
                    "top_logit": lm.tokenizer.decode([top]),
                    "top_logit_prob": float(graph.logit_probs[0]),
                    "metric_node_value": graph.metric_value,
                }
            )
            timings.append(round(seconds, 4))
            rows["sensitivity"] += [
                {"task": name, "graph": slug, **r}
                for r in checks.sensitivity_rows(
                    graph, weights, extra["sweep"], extra["node_threshold"], pruned, extra["edge_threshold"]
                )
            ]
            rows["interventions"] += [
                {"task": name, "graph": slug, **r}
                for r in checks.intervention_rows(
                    lm, tc, graph, pruned.influence, pruned.node_mask, direction.to(lm.device), extra["n_intervene"]
                )
            ]
            for key, value in checks.node_keys(graph, pruned).items():
                counts.setdefault(key, []).append(value)
            bar.update(1)
    compounding = []
    kl_metric = checks.compounding(lm, sets, held_out, opts.batch_size)
    from lib.core.evaluate import behaviour
    from lib.methods import intervals

    base = behaviour(lm, held_out, opts.batch_size)
    ci = dict(n_resamples=opts.n_bootstrap, seed=opts.seed)
    for kind, by_k in kl_metric.items():
        for k, (kl, metric) in by_k.items():
            compounding.append(
                {
                    "task": name,
                    "transcoders": kind,
                    "layers_replaced": k,
                    **intervals.columns("kl", intervals.mean, kl, **ci),
                    **intervals.columns("metric", intervals.mean, metric, **ci),
                    **intervals.columns(
                        "faithfulness",
                        intervals.ratio_of_means,
                        metric,
                        base.metric_clean.to_numpy(),
                        base.metric_corrupted.to_numpy(),
                        **ci,
                    ),
                    "metric_model": float(np.mean(base.metric_clean)),
                }
            )
    features, circuit = task_circuit(lm, tc, name, counts, extra, held_out, base, opts, labels)
    return {
        **rows,
        "compounding": compounding,
        "task_features": features,
        "task_circuit": circuit,
        "frame": frame,
        "seconds": timings,
        "graph_metadata": metadata,
    }


if __name__ == "__main__":
    cli.main(app)
