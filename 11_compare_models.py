"""Compare two models' circuits on the same prompts (checkpoints, seeds, fine-tunes, architectures): behaviour
side by side; head-level circuits (EAP-IG) across the models, layer by layer, and each model's circuit run in the
other; attribution graphs aligned node by node and prompts clustered by how alike the graphs are; features
matched between the two dictionaries (Hungarian assignment on activation correlation) and a shared dictionary
(crosscoder); linear maps between the residual streams and cross-model patching through them; every distance
beside its within-model spread with a permutation test; and a verdict per task."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated

import typer

from lib.core.errors import UserError
from lib.io import checks, cli, progress
from lib.io.headline import Metric

app = cli.script_app(__doc__)
HEADLINE = [
    Metric("edge_score_spearman", "baselines.csv", "score_spearman", where={"level": "heads", "comparison": "A vs B"}),
    Metric("permutation_p_heads", "tests.csv", "p_value", where={"level": "heads"}),
    Metric("min_r2_held_out", "convert.csv", fn=lambda rows: float(rows[rows.part == "whole"].r2_held_out.min())),
    Metric(
        "min_preserved_whole_stream", "patching.csv", fn=lambda rows: float(rows[rows.part == "whole"].preserved.min())
    ),
    Metric("matched_share", "verdict.csv", "matched_share"),
    Metric("graph_alignment_mean", "graphs.csv", fn=lambda rows: float(1 - rows.edit_distance_normalized.mean())),
]


def split_values(value: str, option: str, expected: int | None = None) -> list[str]:
    values = [v for v in value.split("\n") if v.strip()]
    if expected is not None and len(values) != expected:
        raise UserError(
            f"{option} takes exactly {expected} values, one per model (got {len(values)}: {' '.join(values)})"
        )
    return values


@app.command()
def main(
    models: Annotated[
        str, typer.Option("--models", help="the two models, A then B (each anything --model accepts)")
    ] = "",
    tasks: cli.TasksOpt = "all",
    device: cli.DeviceOpt = "auto",
    dtype: cli.DtypeOpt = "float32",
    n_prompts: cli.NPromptsOpt = 40,
    batch_size: cli.BatchOpt = 16,
    seed: cli.SeedOpt = 0,
    out: cli.OutOpt = Path("results"),
    task_metric: cli.TaskMetricOpt = "",
    dictionaries: Annotated[
        str,
        typer.Option(
            "--dictionaries",
            help="two dictionary sets, A's then B's (as --dictionaries elsewhere; toy, toy-seed1, toy-rerun and toy-rerun@step<N> "
            "name the sets shipped with those models); none: the feature-level parts are skipped",
        ),
    ] = "",
    shared_dictionary: Annotated[
        str,
        typer.Option(
            "--shared-dictionary",
            help="train a crosscoder on both models at this site (embed, resid<l>, attn<l>, mlp<l>)",
        ),
    ] = "",
    top_k: Annotated[int, typer.Option("--top-k", help="edges in each model's EAP-IG circuit")] = 50,
    ig_steps: Annotated[int, typer.Option("--ig-steps", help="EAP-IG integration steps")] = 5,
    n_graphs: Annotated[int, typer.Option("--n-graphs", help="attribution graphs per model and task")] = 8,
    node_threshold: Annotated[float, typer.Option("--node-threshold", help="pruning: cumulative influence kept")] = 0.8,
    edge_threshold: Annotated[
        float, typer.Option("--edge-threshold", help="pruning: cumulative edge score kept")
    ] = 0.98,
    ridge_alpha: Annotated[
        str,
        typer.Option(
            "--ridge-alpha",
            help="ridge penalty, a multiple of the mean eigenvalue of x'x; auto: chosen per map by 5-fold "
            "cross-validation over 1e-10 .. 100",
        ),
    ] = "auto",
    n_resamples: Annotated[int, typer.Option("--n-resamples", help="bootstrap pairs of the within-model spread")] = 50,
    n_permutations: Annotated[int, typer.Option("--n-permutations", help="permutations of each test")] = 200,
    n_clusters: Annotated[int, typer.Option("--n-clusters", help="prompt clusters cut from the dendrogram")] = 2,
    min_correlation: Annotated[float, typer.Option("--min-correlation", help="verdict: matched pair threshold")] = 0.9,
    min_matched_share: Annotated[float, typer.Option("--min-matched-share", help="verdict: share matched")] = 0.9,
    min_effect_cosine: Annotated[float, typer.Option("--min-effect-cosine", help="verdict: matched effects")] = 0.9,
    min_r2: Annotated[float, typer.Option("--min-r2", help="verdict: held-out R^2 at every layer")] = 0.9,
    min_preserved: Annotated[float, typer.Option("--min-preserved", help="verdict: behaviour kept under W")] = 0.9,
    min_alignment: Annotated[float, typer.Option("--min-alignment", help="verdict: an aligned prompt cluster")] = 0.5,
    crosscoder_width: Annotated[int, typer.Option("--crosscoder-width", help="crosscoder latents")] = 256,
    crosscoder_k: Annotated[int, typer.Option("--crosscoder-k", help="crosscoder active latents per token")] = 8,
    crosscoder_steps: Annotated[int, typer.Option("--crosscoder-steps", help="crosscoder training steps")] = 2000,
    crosscoder_prompts: Annotated[
        int, typer.Option("--crosscoder-prompts", help="crosscoder training prompts per task (clean and corrupted)")
    ] = 200,
    n_bootstrap: cli.NBootstrapOpt = 1000,
    quiet: cli.QuietOpt = False,
    resume: cli.ResumeOpt = None,
):
    from lib.compare.verdict import Thresholds

    pair = split_values(models, "--models", 2) if models else []
    if not pair:
        raise UserError("--models needs two models to compare, A then B (e.g. --models toy toy-seed1)")
    sets = split_values(dictionaries, "--dictionaries", 2) if dictionaries else []
    checks.check_at_least(1, ("--top-k", top_k), ("--n-permutations", n_permutations))
    checks.check_between(1, 1000, ("--ig-steps", ig_steps))
    checks.check_between(2, 1000, ("--n-graphs", n_graphs), ("--n-resamples", n_resamples))
    checks.check_between(1, 100, ("--n-clusters", n_clusters))
    checks.check_between(1, 1 << 20, ("--crosscoder-width", crosscoder_width), ("--crosscoder-steps", crosscoder_steps))
    checks.check_between(1, crosscoder_width, ("--crosscoder-k", crosscoder_k))
    checks.check_between(2, cli.MAX_PROMPTS, ("--crosscoder-prompts", crosscoder_prompts))
    for option, value in (("--node-threshold", node_threshold), ("--edge-threshold", edge_threshold)):
        checks.check_finite(option, value)
        if not 0 <= value <= 1:
            raise UserError(f"{option} must be between 0 and 1 (got {value})")
    alpha = None if ridge_alpha == "auto" else checks.parse_floats(ridge_alpha, "--ridge-alpha")
    if alpha is not None and (len(alpha) != 1 or not alpha[0] >= 0):
        raise UserError(f"--ridge-alpha must be auto or one number at least 0 (got {ridge_alpha})")
    for option, value in (
        ("--min-correlation", min_correlation),
        ("--min-matched-share", min_matched_share),
        ("--min-effect-cosine", min_effect_cosine),
        ("--min-r2", min_r2),
        ("--min-preserved", min_preserved),
        ("--min-alignment", min_alignment),
    ):
        checks.check_finite(option, value)
    if shared_dictionary and not re.fullmatch(r"embed|(resid|attn|mlp)\d+", shared_dictionary):
        raise UserError(f"--shared-dictionary {shared_dictionary!r}: choose a site embed, resid<l>, attn<l> or mlp<l>")
    opts = cli.common(
        tasks, pair[0], device, dtype, n_prompts, batch_size, seed, out, quiet, n_bootstrap, task_metric=task_metric
    )
    from lib.core.choices import check_model_name

    check_model_name(pair[1])
    if pair[0] == pair[1]:
        progress.note(f"--models names {pair[0]} twice: the model is compared with itself (every distance should be 0)")
    thresholds = Thresholds(min_correlation, min_matched_share, min_effect_cosine, min_r2, min_preserved, min_alignment)
    # the work's imports and the task check, once the options are valid (--help and option errors never pay)
    from lib.compare.prompts import agreement
    from lib.features import files

    raw = [files.read_set(files.resolve(s)) for s in sets] if sets else []
    for model, spec, dictionaries_of in zip(pair, sets, raw):  # a set of another model, before any model loads
        for name, d in dictionaries_of.items():
            trained_on = (getattr(d, "cfg", None) or {}).get("model_name")
            if trained_on not in (None, "", model):
                raise UserError(
                    f"--dictionaries {spec}: dictionary {name} was trained on {trained_on!r}, not on {model!r} "
                    "(give each model its own set, in --models' order)"
                )
    processing = [files.processing_of(r, s) for r, s in zip(raw, sets)] if raw else [None, None]
    shared = agreement(pair, opts)  # per task: same vocabulary, same token positions (refuses what differs)
    opts = dataclasses.replace(opts, processing=processing[0])
    extra = dict(
        models=pair,
        dictionaries=sets,
        shared_dictionary=shared_dictionary,
        top_k=top_k,
        ig_steps=ig_steps,
        n_graphs=n_graphs,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
        ridge_alpha=None if alpha is None else alpha[0],
        n_resamples=n_resamples,
        n_permutations=n_permutations,
        n_clusters=n_clusters,
        thresholds=thresholds.record(),
        crosscoder={
            "width": crosscoder_width,
            "k": crosscoder_k,
            "steps": crosscoder_steps,
            "prompts_per_task": crosscoder_prompts,
        },
    )
    if shared_dictionary and not all(a["same_vocabulary"] for a in shared.values()):
        raise UserError("--shared-dictionary trains on paired tokens: the two models must share a vocabulary")
    with cli.experiment_pair(
        "11_compare_models", opts, (pair[1], processing[1]), resume=resume, headline=HEADLINE, **extra
    ) as ((lm_a, lm_b), run):
        from lib.core.graph import graph_of

        for lm in (lm_a, lm_b):
            checks.check_edge_counts(graph_of(lm), ("--top-k", top_k))
        run.record["task_agreement"] = shared
        dicts = [files.fit(r, lm) for r, lm in zip(raw, (lm_a, lm_b))] if raw else None
        crosscoder = train_crosscoder(lm_a, lm_b, shared_dictionary, extra, opts) if shared_dictionary else None
        if crosscoder is not None:
            run.record["crosscoder"] = {"site": crosscoder.site, "scales": list(crosscoder.scales), **crosscoder.record}
        results = cli.per_task(
            run,
            opts.tasks,
            lambda name: compare_task(lm_a, lm_b, run, name, opts, extra, shared[name], dicts, crosscoder, thresholds),
        )
        run.record["notes"] = {name: r["notes"] for name, r in results.items()}
        run.record["parting_layer"] = {name: r.get("parting_layer") for name, r in results.items()}
        run.record["verdicts"] = {name: r["verdict"]["verdict"] for name, r in results.items()}
        run.record["seconds"] = {name: r["seconds"] for name, r in results.items()}  # per stage (not in CSVs)
        write(run, results, extra)
        for name, r in results.items():
            print(f"{name}: {r['verdict']['verdict']} ({r['verdict']['because']})")
            for note in r["notes"]:
                print(f"  {name}: {note}")


def compare_task(lm_a, lm_b, run, name: str, opts, extra: dict, agree: dict, dicts, crosscoder, thresholds) -> dict:
    from lib.compare import pipeline
    from lib.methods.faithfulness import discovery_and_held_out

    split_a = cli.task_split(run, name, lm_a.tokenizer, opts)
    same = agree["same_vocabulary"]
    split_b = split_a if same else discovery_and_held_out(name, lm_b.tokenizer, opts.n_prompts, opts.seed)
    return pipeline.compare(
        lm_a, lm_b, split_a, split_b, name, opts, extra, agree, dicts, crosscoder, thresholds, progress.bar
    )


def train_crosscoder(lm_a, lm_b, site: str, extra: dict, opts):
    """The shared dictionary at a site, trained on both models' activations on the dictionary trainer's prompts."""
    from lib.compare import features, pipeline
    from lib.tools import crosscoder as trainer
    from lib.tools.dictionaries import TRAIN_SEED, activations, sites

    hooks = []
    for lm in (lm_a, lm_b):
        table = sites(lm.n_layers)
        if site not in table:
            raise UserError(f"--shared-dictionary {site}: model {lm.name} has {lm.n_layers} layers")
        hooks.append(table[site][0])
    cfg = extra["crosscoder"]
    acts = [activations(lm, [hook], cfg["prompts_per_task"], TRAIN_SEED)[hook] for lm, hook in zip((lm_a, lm_b), hooks)]
    with progress.bar(cfg["steps"], f"crosscoder at {site}", "step") as bar:
        dictionary, scales = trainer.train(
            acts[0], acts[1], cfg["width"], cfg["k"], cfg["steps"], 256, 1e-3, opts.seed, bar
        )
    d_a = acts[0].shape[1]
    record = {"tokens": len(acts[0]), "hooks": hooks, "batch": 256, "lr": 1e-3}
    norms = features.relative_decoder_norms(dictionary, d_a)
    return pipeline.Crosscoder(dictionary, site, hooks[0], hooks[1], d_a, scales, norms, record)


COLUMNS = {
    "behaviour.csv": ["task", "model", "name", "n_held_out", "circuit_edges", "metric_clean", "accuracy"],
    "kl.csv": ["task", "item", "kl_a_b"],
    "circuit_overlap.csv": ["task", "k", "edge_jaccard", "node_jaccard"],
    "layers.csv": ["task", "comparison", "layer", "score_spearman", "edge_jaccard", "node_jaccard"],
    "baselines.csv": ["task", "level", "comparison", "prompts", "score_spearman", "edge_jaccard", "node_jaccard"],
    "tests.csv": ["task", "level", "statistic", "observed", "n_permutations", "p_value"],
    "cross_circuits.csv": ["task", "circuit_of", "run_in", "edges", "faithfulness"],
    "features.csv": ["task", "site", "matched", "matched_correlation_mean"],
    "feature_pairs.csv": ["task", "site", "feature_a", "feature_b", "correlation", "effect_a", "effect_b"],
    "task_features.csv": ["task", "site", "feature_a", "effect_a", "feature_b", "correlation", "effect_b"],
    "feature_maps.csv": ["task", "site", "r2_held_out", "r2_train"],
    "graphs.csv": ["task", "prompt", "edit_distance", "edit_distance_normalized", "spectral_distance", "node_jaccard"],
    "crosscoder.csv": ["task", "latent", "relative_norm", "kind", "effect_a", "effect_b"],
    "convert.csv": ["task", "part", "layer_a", "layer_b", "r2_held_out", "r2_train", "r2_identity"],
    "patching.csv": ["task", "part", "layer_a", "layer_b", "preserved", "kl"],
    "verdict.csv": [
        "task",
        "verdict",
        "because",
        "matched_share",
        "effect_cosine",
        "min_r2",
        "min_preserved",
        "kl_a_b",
    ],
}
KEYS = {  # file -> the key of each task's result
    "behaviour.csv": "behaviour",
    "kl.csv": "kl",
    "circuit_overlap.csv": "along_k",
    "layers.csv": "layers",
    "baselines.csv": "baselines",
    "tests.csv": "tests",
    "cross_circuits.csv": "cross",
    "features.csv": "features",
    "feature_pairs.csv": "pairs",
    "task_features.csv": "task_features",
    "feature_maps.csv": "feature_maps",
    "graphs.csv": "graphs",
    "crosscoder.csv": "crosscoder",
    "convert.csv": "convert",
    "patching.csv": "patching",
}


def table(rows: list[dict], columns: list[str]):
    """rows as a frame with at least `columns` (in that order first), so an empty part still has its header."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    return frame.reindex(columns=columns + [c for c in frame.columns if c not in columns])


def write(run, results: dict, extra: dict) -> None:
    import pandas as pd

    from lib.io import plots

    run.csv("dataset.csv", pd.concat([r["frame"] for r in results.values()]))
    frames = {}
    for file, key in KEYS.items():
        frames[file] = table([row for r in results.values() for row in r[key]], COLUMNS[file])
        run.csv(file, frames[file])
    frames["verdict.csv"] = table([r["verdict"] for r in results.values()], COLUMNS["verdict.csv"])
    run.csv("verdict.csv", frames["verdict.csv"])
    run.json("circuits.json", {name: r["masks"] for name, r in results.items()})
    a, b = extra["models"]
    layers = frames["layers.csv"]
    for task, rows in layers.groupby("task", sort=False):
        panels = {
            label: (g.layer.to_numpy(), 1.0 - g.edge_jaccard.to_numpy())
            for label, g in rows.groupby("comparison", sort=False)
        }
        n = int(rows.layer.max())
        run.figure(
            f"layers_{task}.png",
            plots.curves(
                panels,
                f"{task}: where the top-{extra['top_k']} circuits of {a} (A) and {b} (B) part, beside each model's own "
                "spread (disjoint prompt halves)",
                "layer of the receiving node",
                "1 − edge Jaccard of edges into the layer",
                xticks=[str(l) for l in range(n)] + ["logits"],
            ),
        )
    overlap = frames["circuit_overlap.csv"]
    if len(overlap):
        panels = {task: (g.k.to_numpy(), g.edge_jaccard.to_numpy()) for task, g in overlap.groupby("task", sort=False)}
        run.figure(
            "circuit_overlap.png",
            plots.curves(
                panels, f"Edge Jaccard of {a}'s and {b}'s top-k circuits", "k (log scale)", "edge Jaccard", logx=True
            ),
        )
    conv, patch = frames["convert.csv"], frames["patching.csv"]
    if len(conv):
        panels = {
            f"{task}, {part}": (g.layer_a.to_numpy(), g.r2_held_out.to_numpy())
            for (task, part), g in conv.groupby(["task", "part"], sort=False)
        }
        run.figure(
            "convert.png",
            plots.curves(
                panels,
                f"Held-out R² of the ridge map from {a} to {b}",
                "layer of A",
                "R² (1 = exact)",
                hlines={1.0: "exact"},
            ),
        )
        panels = {
            f"{task}, {part}": (g.layer_a.to_numpy(), g.preserved.to_numpy())
            for (task, part), g in patch.groupby(["task", "part"], sort=False)
        }
        run.figure(
            "patching.png",
            plots.curves(
                panels,
                f"{b}'s behaviour when its residual stream (whole, or its circuit's part) is replaced by W·({a}'s)",
                "layer of A",
                "normalized task metric (1 = B's own)",
                hlines={1.0: "B's own", 0.0: "B corrupted"},
            ),
        )
    for task, r in results.items():
        if r["graph_matrix"] is None:
            continue
        matrix, tree, clusters = r["graph_matrix"]
        labels = [f"{i} (c{c})" for i, c in enumerate(clusters)]
        run.figure(
            f"graph_clusters_{task}.png",
            plots.clustered_heatmap(
                matrix,
                tree,
                labels,
                f"{task}: alignment of {a}'s attribution graph on prompt i with {b}'s on prompt j, prompts clustered",
                "alignment (1 − normalized graph edit distance)",
            ),
        )
    pairs = frames["feature_pairs.csv"]
    if len(pairs):
        run.figure(
            "feature_matching.png",
            plots.histograms(
                {
                    task: {"matched pairs, every site": g.correlation.to_numpy()}
                    for task, g in pairs.groupby("task", sort=False)
                },
                f"Correlation of Hungarian-matched features, {a} against {b}",
                "activation correlation",
                "feature pairs",
            ),
        )
    cc = frames["crosscoder.csv"]
    if len(cc):
        first = cc[cc.task == cc.task.iloc[0]]
        run.figure(
            "crosscoder.png",
            plots.histograms(
                {"every latent": {"relative decoder norm": first.relative_norm.to_numpy()}},
                f"Shared dictionary at {extra['shared_dictionary']}: 0 = only {a} writes a latent, 1 = only {b}",
                "||d_B|| / (||d_A|| + ||d_B||)",
                "latents",
            ),
        )


if __name__ == "__main__":
    cli.main(app)
