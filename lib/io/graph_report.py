"""What 10_attribution_graphs.py writes beside the graphs themselves: the transcoder sets of a dictionary set,
feature labels, graph files (frontend JSON, npz, PNG, DOT), the task-level feature table and circuit, summaries
with intervals over graphs, and plots."""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import MaxNLocator

from lib.core.errors import UserError
from lib.io.diagram import plt


def transcoder_sets(loaded: dict, model, where: str, wanted: str) -> dict:
    """{"plt": per-layer set, "clt": cross-layer set} as far as the dictionary set has them (wanted must be
    there: one line otherwise), on the model's device."""
    from lib.features.transcoders import TranscoderSet, from_dictionaries

    def the_one(kind: str, what: str):
        """The set's one transcoder set of a kind (several are one line when that kind is the one wanted)."""
        names = sorted(n for n, d in loaded.items() if isinstance(d, TranscoderSet) and d.kind == kind)
        if len(names) > 1 and wanted == kind:
            raise UserError(
                f"--dictionaries {where} holds {len(names)} {what} ({', '.join(names)}); point --dictionaries at "
                "one of them"
            )
        return loaded[names[0]] if names else None

    sets = {}
    plt = the_one("plt", "per-layer transcoder sets")
    if plt is not None:
        sets["plt"] = plt
    else:
        try:
            sets["plt"] = from_dictionaries(loaded, model.n_layers, where)
        except UserError:
            if wanted == "plt":
                raise
    clt = the_one("clt", "cross-layer transcoders")
    if clt is not None:
        sets["clt"] = clt
    if wanted not in sets:
        raise UserError(
            f"--dictionaries {where}: no cross-layer transcoder for model {model.name} (a folder in "
            "circuit-tracer's CLT layout, W_enc_0.safetensors ...)"
        )
    return {k: tc.to(device=model.device) for k, tc in sets.items()}


def feature_labels(model, tc, top: int = 2):
    """label(layer, feature) -> the tokens the feature's decoder (summed over the layers it writes) promotes most
    through the unembedding, computed when first asked."""
    cache = {}
    w_u = model.bridge.W_U.detach()

    def label(layer: int, feature: int) -> str:
        if (layer, feature) not in cache:
            logits = tc.W_dec[layer][feature].sum(0).to(w_u.dtype) @ w_u
            cache[layer, feature] = " ".join(
                repr(model.tokenizer.decode([t]))[:10] for t in logits.topk(top).indices.tolist()
            )
        return cache[layer, feature]

    return label


def node_name(kind: str, tc_kind: str, layer: int, feature: int, offset: int) -> str:
    """The suite's feature node name (DEFINITIONS.md, Features): tc{l}/f{i}@end-q (clt{l}/... for a cross-layer set)."""
    from lib.features.circuit import position_name

    site = f"{'tc' if tc_kind == 'plt' else 'clt'}{layer}"
    return f"{site}/{'err' if kind == 'error' else f'f{feature}'}@{position_name(-offset)}"


def write_graph(run, model, graph, pruned, slug: str, extra: dict, labels, picture: bool = True) -> dict:
    """graphs/<slug>.json (circuit-tracer's frontend schema), graphs/<slug>.npz (the full adjacency and node
    tables), graphs/<slug>.png and .dot (the pruned graph); returns the graph's frontend metadata (the script
    indexes every graph's in graphs/graph-metadata.json)."""
    from lib.io import graph_json, graph_plot
    from lib.io.results import atomic_write

    (run.path / "graphs").mkdir(exist_ok=True)
    decode = lambda t: model.tokenizer.decode([t])  # noqa: E731
    scan = f"{model.name}-{graph.transcoders.replace(':', '-')}"
    prompt = model.tokenizer.decode(graph.tokens.tolist()[1:])  # the prompt as typed: BOS is the model's own
    front = graph_json.frontend(graph, pruned, decode, slug, scan, extra["node_threshold"], prompt)
    run.json(f"graphs/{slug}.json", front)
    arrays = {
        "adjacency": graph.adjacency.numpy(),
        "metric_row": graph.metric_row.numpy(),
        "targets": graph.targets.numpy(),
        "tokens": graph.tokens.numpy(),
        "active": graph.active.numpy(),
        "activations": graph.activations.numpy(),
        "selected": graph.selected.numpy(),
        "logit_tokens": graph.logit_tokens.numpy(),
        "logit_probs": graph.logit_probs.numpy(),
        "node_ids": np.array(graph_json.node_ids(graph)),
        "node_mask": pruned.node_mask.numpy(),
        "edge_mask": pruned.edge_mask.numpy(),
        "influence": pruned.influence.numpy(),
    }

    def save(path):
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    atomic_write(run.path / "graphs" / f"{slug}.npz", save)
    run.files.append(f"graphs/{slug}.npz")
    if not picture:  # (benchmarks/bench_view.py: a dense graph's PNG takes minutes and is not what it measures)
        return front["metadata"]
    names = {}
    for n in front["nodes"]:
        if n["feature_type"] == "cross layer transcoder":
            layer, feat, _ = map(int, n["node_id"].split("_"))
            names[n["node_id"]] = labels(layer, feat)
    title = f"{slug}: attribution graph ({graph.transcoders})"
    run.figure(f"graphs/{slug}.png", graph_plot.figure(front, graph.n_layers, names, title))
    prompt = front["metadata"]["prompt"]
    run.text(f"graphs/{slug}.dot", graph_plot.dot(front, graph.n_layers, names, f"{title}: {prompt!r}"))
    return front["metadata"]


def task_circuit(model, tc, task: str, counts: dict, extra: dict, data, base, opts, labels) -> tuple[list, list]:
    """The task's graph nodes (frequency over its pruned graphs, mean influence) and its circuit: the nodes in at
    least --min-frequency of them, evaluated on held-out prompts with every other node at its mean over the
    corrupted prompts (faithfulness and completeness as ratios of means, Marks et al.)."""
    from lib.features import graph_checks as checks
    from lib.methods import intervals

    n = extra["n_graphs"]
    circuit = {key for key, values in counts.items() if len(values) / n >= extra["min_frequency"]}
    rows = []
    for key, values in counts.items():
        kind, layer, feat, offset = key
        rows.append(
            {
                "task": task,
                "node": node_name(kind, tc.kind, layer, feat, offset),
                "kind": kind,
                "layer": layer,
                "feature": feat,
                "offset_from_end": offset,
                "frequency": len(values) / n,
                "mean_influence": sum(values) / n,
                "in_circuit": key in circuit,
                "promotes": labels(layer, feat) if kind == "feature" else "",
            }
        )
    rows.sort(key=lambda r: (-r["frequency"], -r["mean_influence"], r["node"]))
    means = checks.mean_values(model, tc, data, opts.batch_size)
    m_model = base.metric_clean.to_numpy()
    evaluate = lambda keys, complement=False: checks.ablated_metric(  # noqa: E731
        model, tc, data, checks.circuit_masks(tc, data, keys, complement), means, opts.batch_size
    )
    m_empty, m_circuit, m_rest = evaluate(set()), evaluate(circuit), evaluate(circuit, True)
    ci = dict(n_resamples=opts.n_bootstrap, seed=opts.seed)
    summary = {
        "task": task,
        "transcoders": tc.kind,
        "nodes": len(circuit),
        "features": sum(k[0] == "feature" for k in circuit),
        "errors": sum(k[0] == "error" for k in circuit),
        **intervals.columns("faithfulness", intervals.ratio_of_means, m_circuit, m_model, m_empty, **ci),
        **intervals.columns("completeness", intervals.ratio_of_means, m_rest, m_model, m_empty, **ci),
        "metric_model": float(m_model.mean()),
        "metric_circuit": float(m_circuit.mean()),
        "metric_every_node_ablated": float(m_empty.mean()),
        "prompts": len(data),
    }
    return rows, [summary]


def summaries(tables: dict, opts) -> dict:
    """Per task means over its graphs with 95% bootstrap intervals over graphs: scores, the sensitivity sweep (per
    node threshold) and intervention gaps."""
    import pandas as pd

    from lib.methods import intervals

    ci = dict(n_resamples=opts.n_bootstrap, seed=opts.seed)
    pruned = ("replacement_pruned", "completeness_pruned", "features_pruned", "errors_pruned", "edges_pruned")

    def means(part, columns, **key) -> dict:
        row = {**key, "graphs": len(part)}
        for col in columns:
            row |= intervals.columns(col, intervals.mean, part[col].to_numpy(), **ci)
        return row

    scores = [
        means(part, ("replacement_full", "completeness_full", *pruned), task=task)
        for task, part in tables["scores"].groupby("task", sort=False)
    ]
    sweep = [
        means(part, (*pruned, "jaccard_vs_default"), task=task, node_threshold=t)
        for (task, t), part in tables["sensitivity"].groupby(["task", "node_threshold"], sort=False)
    ]
    gaps = []
    for task, part in tables["interventions"].groupby("task", sort=False):
        row = {"task": task, "interventions": len(part)}
        for col in ("gap", "gap_attention", "gap_linear"):
            row |= intervals.columns(f"abs_{col}", intervals.mean, part[col].abs().to_numpy(), **ci)
        for col in ("frozen", "real"):
            row[f"corr_predicted_{col}"] = (
                float(np.corrcoef(part.predicted_graph, part[col])[0, 1]) if len(part) > 2 else np.nan
            )
        gaps.append(row)
    return {
        "scores_summary": pd.DataFrame(scores),
        "sensitivity_summary": pd.DataFrame(sweep),
        "interventions_summary": pd.DataFrame(gaps),
    }


def plot_task(task: str, tables: dict, extra: dict) -> dict:
    """{file name: figure} of one task: compounding, sensitivity, interventions, its most frequent nodes."""
    figs = {}
    comp = tables["compounding"][tables["compounding"].task == task]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    for kind, part in comp.groupby("transcoders", sort=False):
        for ax, col in zip(axes, ("kl", "faithfulness")):
            ax.errorbar(
                part.layers_replaced,
                part[col],
                yerr=[
                    (part[col] - part[f"{col}_ci_low"]).clip(lower=0),
                    (part[f"{col}_ci_high"] - part[col]).clip(lower=0),
                ],
                marker="o",
                capsize=3,
                label=kind.upper(),
            )
    axes[0].set(xlabel="first k MLPs replaced (no error nodes)", ylabel="KL(model || replacement), nats")
    axes[1].set(xlabel="first k MLPs replaced (no error nodes)", ylabel="faithfulness (1 = model, 0 = corrupted)")
    axes[1].axhline(1.0, color="0.6", lw=0.8, ls="--")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{task}: error compounding, per-layer (PLT) vs cross-layer (CLT) transcoders", fontsize=10)
    figs[f"compounding_{task}.png"] = fig

    sens = tables["sensitivity"][tables["sensitivity"].task == task].groupby("node_threshold").mean(numeric_only=True)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), layout="constrained")
    for col, label in (("replacement_pruned", "replacement"), ("completeness_pruned", "completeness")):
        axes[0].plot(sens.index, sens[col], marker="o", label=f"{label} (pruned)")
    full = tables["scores"][tables["scores"].task == task][["replacement_full", "completeness_full"]].mean()
    for value, colour, label in (
        (full.replacement_full, "C0", "replacement (full graph)"),
        (full.completeness_full, "C1", "completeness (full graph)"),
    ):
        axes[0].axhline(value, color=colour, lw=0.8, ls="--", label=label)
    axes[0].set(xlabel="node threshold", ylabel="score (mean over graphs)", ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=7, loc="lower left")
    axes[1].plot(sens.index, sens.features_pruned, marker="o", label="features")
    axes[1].plot(sens.index, sens.errors_pruned, marker="s", label="error nodes")
    axes[1].set(xlabel="node threshold", ylabel="nodes kept (mean over graphs)", yscale="symlog")
    axes[1].legend(fontsize=8)
    axes[2].plot(sens.index, sens.jaccard_vs_default, marker="o")
    axes[2].set(xlabel="node threshold", ylabel=f"Jaccard vs threshold {extra['node_threshold']:g}", ylim=(-0.02, 1.02))
    fig.suptitle(
        f"{task}: sensitivity to the pruning threshold ({len(tables['scores'][tables['scores'].task == task])} graphs)",
        fontsize=10,
    )
    figs[f"sensitivity_{task}.png"] = fig

    inter = tables["interventions"]
    inter = inter[inter.task == task] if len(inter) else inter
    fig, ax = plt.subplots(figsize=(5, 4.2), layout="constrained")
    if len(inter):
        for col, marker in (("frozen", "o"), ("real", "x")):
            ax.scatter(
                inter.predicted_graph,
                inter[col],
                marker=marker,
                s=22,
                alpha=0.8,
                label=f"{col} model" + (" (attention frozen)" if col == "frozen" else " (attention recomputed)"),
            )
        lim = float(np.nanmax(np.abs(inter[["predicted_graph", "frozen", "real"]].to_numpy()))) * 1.08 or 1.0
        ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=0.8, ls="--", label="prediction = outcome")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim))
        ax.legend(fontsize=7, loc="upper left")
    ax.set(xlabel="graph's linear prediction of the metric change", ylabel="metric change when intervened")
    ax.set_title(f"{task}: ablating and steering top graph features", fontsize=10)
    figs[f"interventions_{task}.png"] = fig

    feats = tables["task_features"]
    feats = feats[feats.task == task].head(20) if len(feats) else feats
    fig, ax = plt.subplots(figsize=(7, 0.22 * max(len(feats), 4) + 1.2), layout="constrained")
    if len(feats):
        colours = [
            "0.6" if k == "error" else ("#1f63b4" if c else "#9bb7d9") for k, c in zip(feats.kind, feats.in_circuit)
        ]
        ax.barh(range(len(feats))[::-1], feats.frequency, color=colours)
        ax.set_yticks(range(len(feats))[::-1], [f"{n} {p}" for n, p in zip(feats.node, feats.promotes)], fontsize=6)
        ax.axvline(extra["min_frequency"], color="0.4", lw=0.8, ls="--")
    ax.set(xlabel=f"share of the {extra['n_graphs']} pruned graphs holding the node", xlim=(0, 1.02))
    ax.set_title(f"{task}: most frequent graph nodes (dark: in the task circuit, grey: error nodes)", fontsize=9)
    figs[f"task_features_{task}.png"] = fig
    return figs
