"""Sparse feature circuits (Marks et al. 2024): node effects of dictionary features and error nodes on the task
metric, edges among the circuit's nodes, circuits by node threshold, and their faithfulness and completeness on
held-out prompts against neurons, random circuits and the same circuits without their error nodes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from lib.core import choices
from lib.core.errors import UserError
from lib.io import checks, cli, progress
from lib.io.headline import Metric

app = cli.script_app(__doc__)
TARGET = 0.8  # faithfulness the headline asks nodes for
HEADLINE = [
    Metric("nodes_for_0.8_faithfulness", "faithfulness_curve.csv", fn=lambda d: _nodes_for(d)),
    Metric("completeness_at_0.8", "faithfulness_curve.csv", fn=lambda d: _completeness_at(d)),
    Metric("error_effect_share", "node_effects_summary.csv", "error_effect_share"),
]


def _reaching(d):
    rows = d[(d.variant == "features") & (d.faithfulness >= TARGET)]
    return rows.sort_values("nodes_kept").iloc[0] if len(rows) else None


def _nodes_for(d):
    row = _reaching(d)
    return float("nan") if row is None else float(row.nodes_kept)


def _completeness_at(d):
    row = _reaching(d)
    if row is None:
        return float("nan"), float("nan"), float("nan")
    return float(row.completeness), float(row.completeness_ci_low), float(row.completeness_ci_high)


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
    method: Annotated[str, typer.Option(help="attrib (attribution patching) | ig (integrated gradients)")] = "ig",
    ig_steps: Annotated[int, typer.Option("--ig-steps", help="IG steps (alpha = step/steps)")] = 10,
    patch: Annotated[str, typer.Option(help="corrupted | zero: what the effects patch in")] = "corrupted",
    aggregate: Annotated[str, typer.Option(help="sum (over positions) | none (positions from the answer)")] = "sum",
    node_threshold: Annotated[float, typer.Option("--node-threshold", help="|effect| of the saved circuit")] = 0.1,
    edge_threshold: Annotated[float, typer.Option("--edge-threshold", help="|effect| of its edges")] = 0.01,
    ablation: Annotated[
        str,
        typer.Option(
            help="mean (Marks et al.) | resample (the paired corrupted prompt's "
            "nodes) | zero: what nodes outside a circuit carry"
        ),
    ] = "mean",
    n_random: Annotated[int, typer.Option("--n-random", help="random circuits per size")] = 3,
    n_bootstrap: cli.NBootstrapOpt = 1000,
    quiet: cli.QuietOpt = False,
    resume: cli.ResumeOpt = None,
):
    for name, value, allowed in (
        ("--method", method, choices.FEATURE_METHODS),
        ("--patch", patch, choices.FEATURE_PATCHES),
        ("--aggregate", aggregate, choices.FEATURE_AGGREGATIONS),
        ("--ablation", ablation, choices.FEATURE_ABLATIONS),
    ):
        if value not in allowed:
            raise UserError(f"unknown {name} {value!r}; choose from {', '.join(allowed)}")
    checks.check_between(1, 1000, ("--ig-steps", ig_steps))
    checks.check_between(0, 100, ("--n-random", n_random))
    for name, value in (("--node-threshold", node_threshold), ("--edge-threshold", edge_threshold)):
        checks.check_finite(name, value)
        if value < 0:
            raise UserError(f"{name} must be non-negative (got {value})")
    opts = cli.common(
        tasks, model, device, dtype, n_prompts, batch_size, seed, out, quiet, n_bootstrap, task_metric=task_metric
    )
    # the work's imports, once the options are valid
    import pandas as pd

    from lib.features import files
    from lib.io import plots

    extra = dict(
        dictionaries=dictionaries,
        method=method,
        ig_steps=ig_steps,
        patch=patch,
        aggregate=aggregate,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
        ablation=ablation,
        n_random=n_random,
    )
    raw = files.read_set(files.resolve(dictionaries))  # before the model: its format says how to load the model
    opts = dataclasses.replace(opts, processing=files.processing_of(raw, dictionaries))
    with cli.experiment("09_feature_circuits", opts, resume=resume, headline=HEADLINE, **extra) as (lm, run):
        loaded = files.fit(raw, lm)  # checked against the model before any work
        chosen = {n: d for n, d in loaded.items() if d.kind == "sae"}  # transcoders are part 2's (10)
        if not chosen:
            raise UserError(
                f"--dictionaries {dictionaries}: no SAE in the set (transcoders are for 10_attribution_graphs)"
            )
        run.record["dictionaries_not_used"] = sorted(set(loaded) - set(chosen))
        run.record["dictionaries"] = {
            n: {
                "hook_name": d.hook_name,
                "hook_name_out": d.hook_name_out,
                "d_sae": d.d_sae,
                "architecture": d.architecture,
                "k": d.k,
            }
            for n, d in chosen.items()
        }
        results = cli.per_task(run, opts.tasks, lambda name: circuit_task(lm, run, name, opts, chosen, extra))
        curve = pd.DataFrame([r for res in results.values() for r in res["curve"]])
        run.csv("dataset.csv", pd.concat([res["frame"] for res in results.values()]))
        run.csv("node_effects.csv", pd.DataFrame([r for res in results.values() for r in res["nodes"]]))
        run.csv("node_effects_summary.csv", pd.DataFrame([res["summary"] for res in results.values()]))
        run.csv(
            "features.csv",
            pd.DataFrame(
                [r for res in results.values() for r in res["features"]],
                columns=["task", "node", "site", "feature", "effect", "promotes", "suppresses", "top_activations"],
            ),
        )
        run.csv(
            "edges.csv",
            pd.DataFrame(
                [r for res in results.values() for r in res["edges"]],
                columns=["task", "upstream", "downstream", "effect"],
            ),
        )
        if aggregate != "sum":
            run.record["edges"] = "not computed under --aggregate none (edges are summed over positions)"
        run.csv("faithfulness_curve.csv", curve)
        run.csv("area.csv", pd.DataFrame(area_rows(curve, {n: res["summary"]["nodes"] for n, res in results.items()})))
        for name in opts.tasks:
            part = curve[curve.task == name]
            panels = {
                v: (d.nodes_kept.to_numpy(), d.faithfulness.to_numpy())
                for v, d in part.groupby("variant", sort=False)
                if v != "random"
            }
            draws = part[part.variant == "random"].groupby("nodes_requested").faithfulness.mean()
            if len(draws):
                panels[f"random (mean of {extra['n_random']})"] = (draws.index.to_numpy(), draws.to_numpy())
            panels["completeness (features)"] = (
                part[part.variant == "features"].nodes_kept.to_numpy(),
                part[part.variant == "features"].completeness.to_numpy(),
            )
            run.figure(
                f"faithfulness_curve_{name}.png",
                plots.curves(
                    panels,
                    f"{name}: feature circuits by node threshold ({method}, {ablation} ablation, held-out prompts)",
                    "nodes kept (log scale)",
                    "faithfulness (1 = model, 0 = every node ablated)",
                    logx=True,
                    hlines={1.0: "model", 0.0: "every node ablated"},
                ),
            )
        print(
            curve[curve.variant == "features"][["task", "nodes_kept", "faithfulness", "completeness"]].to_string(
                index=False, float_format="%.3f"
            )
        )


def area_rows(curve, totals: dict) -> list[dict]:
    """CPR- and CMD-style areas (lib.methods.area) of each variant's curve over the fraction of nodes kept: the
    trapezoid area of faithfulness (`cpr_like`) and of |1 - faithfulness| (`cmd_like`), linear and log10 axes,
    on the sweep's own sizes (not MIB's fixed grid, whose sizes count edges); random: the mean of its draws."""
    from lib.methods.area import areas

    rows = []
    for (task, variant), part in curve.groupby(["task", "variant"], sort=False):
        part = part[part.nodes_kept > 0]  # an empty circuit has no place on the log axis (its value is 0 by definition)
        points = part.groupby("nodes_kept", sort=True).faithfulness.mean()  # one point per size (random: mean)
        fractions = points.index.to_numpy(dtype=float) / totals[task]
        a = areas(fractions, points.to_numpy())
        rows.append(
            {
                "task": task,
                "variant": variant,
                "points": len(points),
                "cpr_like": a["area"],
                "cmd_like": a["area_from_1"],
                "log_cpr_like": a["log_area"],
                "log_cmd_like": a["log_area_from_1"],
            }
        )
    return rows


def circuit_task(lm, run, name: str, opts, chosen: dict, extra: dict) -> dict:
    """One task: node effects on discovery prompts, circuits along the node-threshold sweep evaluated on
    held-out prompts (features, without errors, neurons, random), the saved circuit and its features."""
    from lib.features.circuit import Accumulator, keep_masks, random_choice, thresholds_for_sizes
    from lib.features.dictionary import identity_dictionary
    from lib.features.effects import node_effects
    from lib.methods.faithfulness import log_grid

    split = cli.task_split(run, name, lm.tokenizer, opts)
    discovery, held_out, frame = split.discovery, split.held_out, split.frame
    neurons = {n: identity_dictionary(d) for n, d in chosen.items()}
    effects = {}
    for label, dicts in (("features", chosen), ("neurons", neurons)):
        acc = Accumulator(extra["aggregate"])
        with progress.bar(len(discovery), f"{name}: {label} node effects ({extra['method']})", "prompt") as bar:
            for start in range(0, len(discovery), opts.batch_size):
                batch = discovery.subset(slice(start, start + opts.batch_size))
                acc.add(
                    node_effects(lm, dicts, batch, extra["method"], extra["patch"], extra["ig_steps"]), batch.lengths
                )
                bar.update(len(batch))
        effects[label] = acc.result()
    nodes = effects["features"]
    total = len(nodes.magnitudes())
    sizes = log_grid(total)
    rng = np.random.default_rng(opts.seed)
    curve = []
    with progress.bar(len(sizes), f"{name}: circuits along the node-threshold sweep", "size") as bar:
        evaluate = _evaluator(lm, held_out, opts, extra["ablation"])
        for size in sizes:
            for label, node_set, dicts, drop_errors in (
                ("features", nodes, chosen, False),
                ("features without errors", nodes, chosen, True),
                ("neurons", effects["neurons"], neurons, False),
            ):
                threshold = thresholds_for_sizes(node_set, [size])[0]
                keep = keep_masks(node_set, threshold, held_out, drop_errors=drop_errors)
                curve.append(
                    {
                        "task": name,
                        "variant": label,
                        "nodes_requested": size,
                        "threshold": threshold,
                        "nodes_kept": _count(node_set, threshold, drop_errors),
                        **evaluate(dicts, keep, label == "features"),
                    }
                )
            for r in range(extra["n_random"]):
                keep = keep_masks(nodes, 0.0, held_out, chosen=random_choice(nodes, size, rng))
                curve.append(
                    {
                        "task": name,
                        "variant": "random",
                        "nodes_requested": size,
                        "threshold": np.nan,
                        "nodes_kept": size,
                        "draw": r,
                        **evaluate(chosen, keep, False),
                    }
                )
            bar.update(1)
    node_rows = [{"task": name, **r} for r in nodes.table()]
    error_share = sum(abs(r["effect"]) for r in node_rows if r["feature"] < 0) / max(
        sum(abs(r["effect"]) for r in node_rows), 1e-30
    )
    edges = circuit_edges(lm, name, nodes, chosen, discovery, opts, extra)
    _save_circuit(run, lm, name, nodes, extra, chosen, edges)
    features = feature_rows(lm, name, nodes, chosen, discovery, extra["node_threshold"], opts.batch_size)
    _draw(run, name, nodes, features, extra, edges)
    return {
        "curve": curve,
        "nodes": node_rows,
        "frame": frame,
        "edges": edges,
        "summary": {"task": name, "nodes": total, "error_effect_share": error_share},
        "features": features,
    }


def _count(node_set, threshold: float, drop_errors: bool) -> int:
    kept = sum(int((node_set.features[s].abs() >= threshold).sum()) for s in node_set.features)
    if not drop_errors:
        kept += sum(int((node_set.errors[s].abs() >= threshold).sum()) for s in node_set.errors)
    return kept


def _evaluator(lm, data, opts, ablation: str):
    """evaluate(dictionaries, keep, completeness) -> faithfulness (and completeness) with 95% intervals."""
    from lib.core.evaluate import behaviour
    from lib.features.ablate import ablated_metric, every_node, reference_values
    from lib.methods import intervals

    m_model = behaviour(lm, data, opts.batch_size).metric_clean.to_numpy()
    cache = {}

    def evaluate(dicts, keep, completeness: bool) -> dict:
        key = id(dicts)
        if key not in cache:
            values = reference_values(lm, dicts, data, ablation, opts.batch_size)
            nothing = every_node(dicts, data, False)
            cache[key] = (
                values,
                ablated_metric(lm, dicts, data, nothing, values, batch_size=opts.batch_size).cpu().numpy(),
            )
        values, m_empty = cache[key]
        ci = dict(n_resamples=opts.n_bootstrap, seed=opts.seed)
        m_c = ablated_metric(lm, dicts, data, keep, values, batch_size=opts.batch_size).cpu().numpy()
        row = intervals.columns("faithfulness", intervals.ratio_of_means, m_c, m_model, m_empty, **ci)
        if completeness:
            m_rest = (
                ablated_metric(lm, dicts, data, keep, values, complement=True, batch_size=opts.batch_size).cpu().numpy()
            )
            row |= intervals.columns("completeness", intervals.ratio_of_means, m_rest, m_model, m_empty, **ci)
        return row

    return evaluate


def circuit_edges(lm, name: str, nodes, chosen: dict, data, opts, extra: dict) -> list[dict]:
    """Edges among the saved circuit's nodes (lib.features.edges), mean over the discovery prompts, those with
    |effect| >= --edge-threshold; under --aggregate none none are computed (run.json says so)."""
    import torch

    from lib.features.edges import edge_effects
    from lib.features.effects import folded_gradients, ig_gradients, node_states, patch_states
    from lib.features.splice import site as site_of

    if nodes.aggregation != "sum":
        return []
    threshold = extra["node_threshold"]
    kept = {
        s: (nodes.features[s][0].abs() >= threshold, bool(nodes.errors[s][0].abs() >= threshold))
        for s in nodes.features
    }
    downstream = {s: (torch.nonzero(f).flatten().tolist(), e) for s, (f, e) in kept.items() if f.any() or e}
    # IG gradients are per site: only the sites with a downstream node need them
    downstream_dicts = {n: d for n, d in chosen.items() if site_of(d) in downstream}
    totals: dict[tuple, float] = {}
    with progress.bar(
        len(data),
        f"{name}: edge effects among {sum(len(f) + e for f, e in downstream.values())} circuit nodes",
        "prompt",
    ) as bar:
        for start in range(0, len(data), opts.batch_size):
            batch = data.subset(slice(start, start + opts.batch_size))
            clean = node_states(lm, chosen, batch.clean.to(lm.device))
            patched = patch_states(lm, chosen, batch, extra["patch"], clean)
            # the downstream nodes' gradients as their node effects take them (Marks et al.'s left vector)
            grads = (
                folded_gradients(lm, chosen, batch, clean)
                if extra["method"] == "attrib"
                else ig_gradients(lm, downstream_dicts, batch, clean, patched, extra["ig_steps"])
            )
            for row in edge_effects(
                lm, chosen, batch, downstream, kept, clean, patched, grads, parallel=lm.arch.parallel
            ):
                key = (row["upstream"], row["downstream"])
                totals[key] = totals.get(key, 0.0) + row["effect"] * len(batch) / len(data)
            bar.update(len(batch))
    return [
        {"task": name, "upstream": u, "downstream": d, "effect": e}
        for (u, d), e in totals.items()
        if abs(e) >= extra["edge_threshold"]
    ]


def _draw(run, name: str, nodes, features: list[dict], extra: dict, edges: list[dict]) -> None:
    """The saved circuit's nodes as a PNG and as DOT, each feature labelled with the token it promotes most."""
    from lib.io import diagram

    promoted = {r["node"]: r["promotes"].split(" ")[0] for r in features}
    kept = [
        {**r, "promotes": promoted.get(r["node"].split("@")[0], "")}
        for r in nodes.table()
        if abs(r["effect"]) >= extra["node_threshold"]
    ]
    title = f"{name}: feature circuit at node threshold {extra['node_threshold']:g} ({len(kept)} nodes)"
    run.figure(f"circuit_{name}.png", diagram.feature_figure(kept, title, edges=edges))
    run.text(f"circuit_{name}.dot", diagram.feature_dot(kept, title, edges=edges))


def _save_circuit(run, lm, name: str, nodes, extra: dict, chosen: dict, edges: list[dict]) -> None:
    rows = [r for r in nodes.table() if abs(r["effect"]) >= extra["node_threshold"]]
    run.json(
        f"circuit_{name}.json",
        {
            "model": lm.name,
            "task": name,
            "method": f"feature-circuit-{extra['method']}",
            "params": extra,
            "nodes": [{"node": r["node"], "score": r["effect"]} for r in sorted(rows, key=lambda r: -abs(r["effect"]))],
            "dictionaries": {n: d.hook_name_out for n, d in chosen.items()},
            "edges": [{"edge": f"{e['upstream']}->{e['downstream']}", "score": e["effect"]} for e in edges],
        },
    )


def feature_rows(
    lm, name: str, nodes, chosen: dict, data, threshold: float, batch_size: int, top: int = 5
) -> list[dict]:
    """Per circuit feature: tokens its decoder direction promotes and suppresses through the unembedding, and
    its top-activating prompts and positions in the discovery prompts (read batch by batch: only each prompt's
    largest activation of each circuit feature is kept)."""
    import torch

    from lib.features.effects import node_states
    from lib.features.splice import site as site_of

    by_site = {site_of(d): d for d in chosen.values()}
    wanted = {
        site: sorted(set(torch.nonzero(f.abs() >= threshold)[:, 1].tolist())) for site, f in nodes.features.items()
    }
    best_value = {s: torch.zeros(len(data), len(i)) for s, i in wanted.items() if i}  # [N, features]
    best_position = {s: torch.zeros(len(data), len(i), dtype=torch.long) for s, i in wanted.items() if i}
    for start in range(0, len(data), batch_size):
        batch = data.subset(slice(start, start + batch_size))
        states = node_states(
            lm, {n: d for n, d in chosen.items() if site_of(d) in best_value}, batch.clean.to(lm.device)
        )
        for s in best_value:
            acts = states[s]["features"][..., wanted[s]].cpu() * batch.real[..., None]  # [B, P, features]
            value, position = acts.max(1)
            best_value[s][start : start + len(batch)], best_position[s][start : start + len(batch)] = value, position
    w_u = lm.bridge.W_U.detach().float().cpu()  # [d_model, vocab]
    rows = []
    for site, features in wanted.items():
        for k, i in enumerate(features):
            logits = by_site[site].W_dec[i].detach().float().cpu() @ w_u
            values = best_value[site][:, k]
            examples = []
            for n in torch.argsort(values, descending=True)[:3].tolist():
                if values[n] > 0:
                    p = int(best_position[site][n, k])
                    token = lm.tokenizer.decode([int(data.clean[n, p])])
                    examples.append(f"{data.info.clean_text[n]!r} @{p} {token!r} ({float(values[n]):.3g})")
            rows.append(
                {
                    "task": name,
                    "node": f"{site}/f{i}",
                    "site": site,
                    "feature": i,
                    "effect": float(nodes.features[site][:, i].abs().max()),
                    "promotes": " ".join(repr(lm.tokenizer.decode([t])) for t in logits.topk(top).indices.tolist()),
                    "suppresses": " ".join(
                        repr(lm.tokenizer.decode([t])) for t in (-logits).topk(top).indices.tolist()
                    ),
                    "top_activations": " | ".join(examples),
                }
            )
    return rows


if __name__ == "__main__":
    cli.main(app)
