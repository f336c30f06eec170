"""One task of a two-model comparison, every part in turn (11_compare_models.py writes what it returns):
behaviour, head-level circuits, features and attribution graphs, the crosscoder, convertibility, the verdict."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from lib.compare import circuits as heads
from lib.compare import convert, features, graphs
from lib.compare.verdict import Thresholds, verdict
from lib.core.forward import answer_logits
from lib.core.graph import graph_of
from lib.core.metrics import kl_divergence
from lib.features.dictionary import Dictionary
from lib.methods import intervals
from lib.methods.alignment import fit_map, r_squared
from lib.methods.eap import edge_scores_per_prompt
from lib.methods.faithfulness import Evaluator, log_grid, top_k_mask
from lib.methods.graph_distance import cluster, distances, normalized_edit_distance

CROSSCODER_KINDS = (("A-only", 0.0, 0.1), ("shared", 0.1, 0.9), ("B-only", 0.9, 1.0))  # relative decoder norm bins


@dataclass
class Crosscoder:
    """A trained shared dictionary and what reading it needs."""

    dictionary: Dictionary  # over [x_A * scale_A, x_B * scale_B]
    site: str
    hook_a: str
    hook_b: str
    d_a: int
    scales: tuple[float, float]
    relative_norms: np.ndarray  # [latents]
    record: dict = field(default_factory=dict)  # how it was trained (run.json)


@contextmanager
def timed(out: dict, stage: str):
    """Adds the wall-clock seconds of the block to out["seconds"][stage] (run.json and benchmarks, not CSVs)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        out["seconds"][stage] = out["seconds"].get(stage, 0.0) + time.perf_counter() - t0


def kind_of(relative_norm: float, kinds) -> str:
    for name, low, high in kinds:
        if low <= relative_norm <= high:
            return name
    return "shared"


def _behaviour_row(task: str, which: str, lm, ev: Evaluator, keep, opts) -> dict:
    ci = dict(n_resamples=opts.n_bootstrap, seed=opts.seed)
    row = {"task": task, "model": which, "name": lm.name, "n_held_out": len(ev.clean), "circuit_edges": int(keep.sum())}
    row["metric_clean"] = float(ev.clean.mean())
    row["accuracy"] = float(intervals.positive_share(ev.clean))
    if opts.n_bootstrap:
        row |= intervals.columns("metric_clean", intervals.mean, ev.clean, **ci)
        row |= intervals.columns("accuracy", intervals.positive_share, ev.clean, **ci)
    faith = ev.faithfulness(keep)
    return row | {k: v for k, v in faith.items() if k.startswith("faithfulness")}


def compare(
    lm_a, lm_b, split_a, split_b, task: str, opts, extra: dict, agree: dict, dicts, crosscoder, t: Thresholds, bar
) -> dict:
    """Every part of the comparison on one task. split_*: each model's discovery and held-out prompts (the same
    prompts; the same token ids when the models share a vocabulary). bar(total, what, unit): a progress bar."""
    bs, k = opts.batch_size, extra["top_k"]
    out: dict = {"notes": [], "frame": split_a.frame, "seconds": {}}
    start = time.perf_counter()
    graph_a, graph_b = graph_of(lm_a), graph_of(lm_b)

    # 1. behaviour side by side, each model's own EAP-IG circuit
    items = []
    for lm, graph, split in ((lm_a, graph_a, split_a), (lm_b, graph_b, split_b)):
        with bar(len(split.discovery), f"{task}: EAP-IG scores ({lm.name})", "prompt") as b, timed(out, "eap_ig"):
            items.append(edge_scores_per_prompt(lm, graph, split.discovery, bs, "eap-ig", extra["ig_steps"], b)[1])
    items_a, items_b = items
    mean_a, mean_b = items_a.double().mean(0), items_b.double().mean(0)
    keep_a, keep_b = top_k_mask(graph_a, mean_a, k), top_k_mask(graph_b, mean_b, k)
    ev_a = Evaluator(lm_a, graph_a, split_a.held_out, "resample", bs, opts.n_bootstrap, opts.seed)
    ev_b = Evaluator(lm_b, graph_b, split_b.held_out, "resample", bs, opts.n_bootstrap, opts.seed)
    out["behaviour"] = [
        _behaviour_row(task, "A", lm_a, ev_a, keep_a, opts),
        _behaviour_row(task, "B", lm_b, ev_b, keep_b, opts),
    ]
    out["masks"] = {
        f"A ({lm_a.name}) top-{k}": graph_a.edges_of(keep_a),
        f"B ({lm_b.name}) top-{k}": graph_b.edges_of(keep_b),
    }
    out["kl"] = []
    if agree["same_vocabulary"]:
        held = split_a.held_out
        logits_a = answer_logits(lm_a, held.clean, held.answer_pos, bs).double().cpu()
        logits_b = answer_logits(lm_b, split_b.held_out.clean, split_b.held_out.answer_pos, bs).double().cpu()
        kl = kl_divergence(logits_a, logits_b).numpy()
        out["kl"] = [{"task": task, "item": i, "kl_a_b": float(v)} for i, v in enumerate(kl)]
        out["kl_summary"] = {"kl_a_b": float(kl.mean())} | (
            intervals.columns("kl_a_b", intervals.mean, kl, n_resamples=opts.n_bootstrap, seed=opts.seed)
            if opts.n_bootstrap
            else {}
        )
    else:
        out["notes"].append("different vocabularies: no KL between the models' output distributions")

    # 2. head-level circuits
    reason = heads.shape_difference(graph_a, graph_b)
    out["tests"], out["baselines"], out["layers"], out["along_k"], out["cross"] = [], [], [], [], []
    if reason is not None:
        out["notes"].append(f"head-level comparison skipped: {reason}")
    else:
        graph = graph_a
        out["along_k"] = [{"task": task, **r} for r in heads.along_k(graph, mean_a, mean_b, log_grid(graph.n_edges))]
        first, second = heads.prompt_halves(items_a.shape[0], opts.seed)
        for label, x, y in (
            ("A vs B", mean_a, mean_b),
            ("A half vs A other half", items_a[first].double().mean(0), items_a[second].double().mean(0)),
            ("B half vs B other half", items_b[first].double().mean(0), items_b[second].double().mean(0)),
        ):
            out["layers"] += [{"task": task, "comparison": label, **r} for r in heads.by_layer(graph, x, y, k)]
        out["baselines"] = [
            {"task": task, "level": "heads", **r}
            for r in heads.noise_baselines(graph, items_a, items_b, k, extra["n_resamples"], opts.seed)
        ]
        out["tests"].append(
            {
                "task": task,
                "level": "heads",
                **heads.permutation_test(graph, items_a, items_b, extra["n_permutations"], opts.seed),
            }
        )
        out["parting_layer"] = parting_layer(out["layers"])
        own = {("A", "A"): out["behaviour"][0], ("B", "B"): out["behaviour"][1]}  # evaluated above
        for circuit, keep in (("A", keep_a), ("B", keep_b)):
            for model, ev in (("A", ev_a), ("B", ev_b)):
                faith = own.get((circuit, model)) or ev.faithfulness(keep)
                out["cross"].append(
                    {
                        "task": task,
                        "circuit_of": circuit,
                        "run_in": model,
                        "edges": int(keep.sum()),
                        **{key: v for key, v in faith.items() if key.startswith("faithfulness")},
                    }
                )

    # 3-4. features, attribution graphs
    evidence: dict = {}
    out["features"], out["pairs"], out["task_features"], out["feature_maps"] = [], [], [], []
    out["graphs"], out["graph_matrix"] = [], None
    if dicts is None:
        out["notes"].append("no --dictionaries: feature alignment and attribution graphs skipped")
    else:
        feature_part(lm_a, lm_b, split_a, split_b, task, opts, extra, agree, dicts, t, out, evidence, bar)

    # crosscoder
    out["crosscoder"] = []
    if crosscoder is not None:
        if agree["same_positions"]:
            out["crosscoder"] = crosscoder_rows(lm_a, lm_b, split_a, split_b, task, crosscoder, bs)
        else:
            out["notes"].append("crosscoder effects skipped: the models' token positions differ")

    # 5-6. convertibility, cross-model patching
    out["convert"], out["patching"] = [], []
    if not agree["same_positions"]:
        out["notes"].append("convertibility and cross-model patching skipped: the models' token positions differ")
    else:
        convert_part(lm_a, lm_b, graph_a, graph_b, split_a, split_b, keep_a, keep_b, ev_b, task, opts, extra, out)
        evidence["min_r2"] = float(min(r["r2_held_out"] for r in out["convert"] if r["part"] == "whole"))
        evidence["min_preserved"] = float(min(r["preserved"] for r in out["patching"] if r["part"] == "whole"))

    out["seconds"]["total"] = time.perf_counter() - start

    # 8. verdict
    name, because = verdict(evidence, t)
    out["verdict"] = {
        "task": task,
        "verdict": name,
        "because": because,
        **{key: evidence.get(key) for key in ("matched_share", "effect_cosine", "min_r2", "min_preserved")},
        "cluster_alignment": " ".join(f"{c:.4f}" for c in evidence.get("cluster_alignment") or []),
        **out.get("kl_summary", {}),  # KL(A || B) at the answer over held-out prompts (same vocabulary)
    }
    return out


def parting_layer(layer_rows: list[dict]) -> int | None:
    """The first layer whose A-vs-B edge Jaccard falls below both models' own half-vs-half Jaccard there
    ("the models part at layer l"); None when no layer does."""
    by = {}
    for r in layer_rows:
        by.setdefault(r["layer"], {})[r["comparison"]] = r["edge_jaccard"]
    for layer in sorted(by):
        row = by[layer]
        if row["A vs B"] < min(row["A half vs A other half"], row["B half vs B other half"]):
            return layer
    return None


def feature_part(
    lm_a, lm_b, split_a, split_b, task, opts, extra, agree, dicts, t: Thresholds, out, evidence, bar
) -> None:
    """Part 4 (features matched per common site, their effects, feature-to-feature maps) and part 3 (graphs)."""
    from lib.features.transcoders import from_dictionaries

    bs = opts.batch_size
    set_a, set_b = dicts
    sites = features.common_sites(set_a, set_b)
    if not sites:
        out["notes"].append("the two dictionary sets share no site: feature alignment skipped")
        return
    if not agree["same_positions"]:
        out["notes"].append("feature alignment skipped: the models' token positions differ")
        return
    acts_a = features.feature_activations(lm_a, set_a, sites, split_a.discovery, bs)
    acts_b = features.feature_activations(lm_b, set_b, sites, split_b.discovery, bs)
    test_a = features.feature_activations(lm_a, set_a, sites, split_a.held_out, bs)
    test_b = features.feature_activations(lm_b, set_b, sites, split_b.held_out, bs)
    effects_a = features.feature_effects(lm_a, set_a, sites, split_a.discovery, bs)
    effects_b = features.feature_effects(lm_b, set_b, sites, split_b.discovery, bs)
    matchings, matched, alive = {}, 0, 0
    cosines = []
    for site in sites:
        ea, eb = effects_a[site].numpy(), effects_b[site].numpy()
        m = features.align_site(acts_a[site], acts_b[site], ea, eb)
        matchings[site] = m
        row = features.site_row(site, m, ea, eb, t.min_correlation)
        out["features"].append({"task": task, **row})
        matched += int((m.pair_correlation >= t.min_correlation).sum())
        alive += int(m.alive_a.sum())
        if np.isfinite(row["effect_cosine"]):
            cosines.append(row["effect_cosine"])
        for (i, j), c in zip(m.pairs.tolist(), m.pair_correlation.tolist()):
            out["pairs"].append(
                {
                    "task": task,
                    "site": site,
                    "feature_a": i,
                    "feature_b": j,
                    "correlation": c,
                    "effect_a": float(ea[i]),
                    "effect_b": float(eb[j]),
                }
            )
        top = np.argsort(-np.abs(ea), kind="stable")[:5]
        partner = {i: (j, c) for (i, j), c in zip(m.pairs.tolist(), m.pair_correlation.tolist())}
        for i in top.tolist():
            j, c = partner.get(i, (-1, float(m.best_b_correlation[i])))
            out["task_features"].append(
                {
                    "task": task,
                    "site": site,
                    "feature_a": i,
                    "effect_a": float(ea[i]),
                    "feature_b": j,
                    "correlation": c,
                    "effect_b": float(eb[j]) if j >= 0 else np.nan,
                    "best_partner_b": int(m.best_b[i]),
                }
            )
        with timed(out, "ridge_maps"):
            fit = fit_map(acts_a[site], acts_b[site], extra["ridge_alpha"])
        out["feature_maps"].append(
            {
                "task": task,
                "site": site,
                "r2_held_out": r_squared(test_b[site], fit(test_a[site])),
                "r2_train": r_squared(acts_b[site], fit(acts_a[site])),
            }
        )
    evidence["matched_share"] = matched / max(alive, 1)
    evidence["effect_cosine"] = min(cosines) if cosines else None

    # part 3: attribution graphs over the per-layer transcoders of both sets
    try:
        tc_a = from_dictionaries(set_a, lm_a.n_layers, "A")
        tc_b = from_dictionaries(set_b, lm_b.n_layers, "B")
    except Exception as e:  # noqa: BLE001 - a set without per-layer transcoders: said, the graphs skipped
        out["notes"].append(f"attribution graphs skipped: {e}")
        return
    names_a, names_b = tc_a.name.split("+"), tc_b.name.split("+")
    if names_a != names_b or not all(n in matchings for n in names_b):
        out["notes"].append("attribution graphs skipped: the two sets' per-layer transcoders are not at the same sites")
        return
    feature_map = {}
    for layer, name in enumerate(names_b):
        m = matchings[name]
        mapping = np.full(len(m.alive_b), -1, dtype=np.int64)
        mapping[m.pairs[:, 1]] = m.pairs[:, 0]
        feature_map[layer] = mapping
    n_graphs = min(extra["n_graphs"], len(split_a.discovery))
    if n_graphs < extra["n_graphs"]:
        out["notes"].append(f"{n_graphs} attribution graphs per model: the task has {n_graphs} discovery prompts")
    built = {"A": [], "B": []}
    for tag, lm, tc, split, fmap in (("A", lm_a, tc_a, split_a, None), ("B", lm_b, tc_b, split_b, feature_map)):
        with bar(n_graphs, f"{task}: attribution graphs ({lm.name})", "graph") as b:
            for i in range(n_graphs):
                with timed(out, "attribution_graphs"):
                    graph, pruned = graphs.pruned_graph(
                        lm, tc, split.discovery, i, extra["node_threshold"], extra["edge_threshold"], 64
                    )
                built[tag].append(
                    graphs.labelled(graph, pruned, graphs.labels(graph, lm.tokenizer, fmap, f"feature of {tag}"))
                )
                b.update(1)
    for i, (ga, gb) in enumerate(zip(built["A"], built["B"])):
        out["graphs"].append(
            {
                "task": task,
                "prompt": i,
                "nodes_a": len(ga.nodes),
                "nodes_b": len(gb.nodes),
                "edges_a": len(ga.edges),
                "edges_b": len(gb.edges),
                **distances(ga, gb),
            }
        )
    matrix = graphs.alignment_matrix(built["A"], built["B"])  # [N, N] A's prompt i against B's prompt j
    tree, clusters = cluster(1.0 - matrix, min(extra["n_clusters"], n_graphs))
    out["graph_matrix"] = (matrix, tree, clusters)
    diagonal = np.diag(matrix)
    evidence["cluster_alignment"] = [float(diagonal[clusters == c].mean()) for c in sorted(set(clusters.tolist()))]
    for r in out["graphs"]:
        r["cluster"] = int(clusters[r["prompt"]])
    within = {
        "A vs B, same prompt": [normalized_edit_distance(a, b) for a, b in zip(built["A"], built["B"])],
        "A vs B, different prompts": [
            normalized_edit_distance(a, b) for i, a in enumerate(built["A"]) for j, b in enumerate(built["B"]) if i != j
        ],
        "A vs A, different prompts": [
            normalized_edit_distance(a, b) for i, a in enumerate(built["A"]) for j, b in enumerate(built["A"]) if i < j
        ],
        "B vs B, different prompts": [
            normalized_edit_distance(a, b) for i, a in enumerate(built["B"]) for j, b in enumerate(built["B"]) if i < j
        ],
    }
    for label, values in within.items():
        v = np.asarray(values, dtype=float)
        out["baselines"].append(
            {
                "task": task,
                "level": "graphs",
                "comparison": label,
                "prompts": n_graphs,
                "edit_distance_normalized": float(v.mean()),
                "edit_distance_normalized_low": float(np.percentile(v, 2.5)),
                "edit_distance_normalized_high": float(np.percentile(v, 97.5)),
            }
        )
    out["tests"].append(
        {
            "task": task,
            "level": "graphs",
            **graphs.two_sample_test(built["A"], built["B"], extra["n_permutations"], opts.seed),
        }
    )


def crosscoder_rows(lm_a, lm_b, split_a, split_b, task: str, cc: Crosscoder, bs: int) -> list[dict]:
    """Every latent of the shared dictionary: its relative decoder norm, kind, and effect on the task in each model."""
    side_a = features.hook_gradients(lm_a, split_a.discovery, cc.hook_a, bs)
    side_b = features.hook_gradients(lm_b, split_b.discovery, cc.hook_b, bs)
    effect_a, effect_b = features.latent_effects(cc.dictionary, cc.d_a, side_a, side_b, cc.scales)
    return [
        {
            "task": task,
            "latent": i,
            "relative_norm": float(r),
            "kind": kind_of(float(r), CROSSCODER_KINDS),
            "effect_a": float(effect_a[i]),
            "effect_b": float(effect_b[i]),
        }
        for i, r in enumerate(cc.relative_norms)
    ]


def convert_part(lm_a, lm_b, graph_a, graph_b, split_a, split_b, keep_a, keep_b, ev_b, task, opts, extra, out) -> None:
    """Parts 5 and 6: ridge maps A -> B per layer (the whole residual stream and the circuits' parts), held-out
    R^2, and B run with each map's output in place of its own."""
    bs, alpha = opts.batch_size, extra["ridge_alpha"]
    pairs = convert.layer_pairs(lm_a.n_layers, lm_b.n_layers)
    with timed(out, "ridge_maps"):  # the activations the maps are fitted to, and the fits
        fitted = ridge_maps(lm_a, lm_b, graph_a, graph_b, split_a, split_b, keep_a, keep_b, pairs, bs, alpha)
    held = split_b.held_out
    clean = answer_logits(lm_b, held.clean, held.answer_pos, bs).double().cpu()
    jobs, patches = [], []
    for label, (maps, rows, ta, tb) in fitted.items():
        out["convert"] += [{"task": task, "part": label, **r} for r in rows]
        for (la, lb), fit in maps.items():
            jobs.append((label, la, lb))
            patches.append((lb, fit(ta[la]), None if label == "whole" else tb[lb]))
    with timed(out, "patching"):
        every = convert.patched_runs(lm_b, held, patches, bs)
    for (label, la, lb), patched in zip(jobs, every):
        row = convert.patching_row(held, patched, clean, ev_b.clean, ev_b.corrupt, opts.n_bootstrap, opts.seed)
        out["patching"].append({"task": task, "part": label, "layer_a": la, "layer_b": lb, **row})


def ridge_maps(lm_a, lm_b, graph_a, graph_b, split_a, split_b, keep_a, keep_b, pairs, bs, alpha) -> dict:
    """{"whole" | "circuit": (maps, R^2 rows, A's held-out activations, B's)} for the residual stream after each
    layer and for the circuits' parts of it (the summed outputs of each model's circuit sources)."""
    layers_a, layers_b = [la for la, _ in pairs], sorted({lb for _, lb in pairs})
    jobs = ((lm_a, graph_a, keep_a, layers_a, split_a), (lm_b, graph_b, keep_b, layers_b, split_b))
    fitted = {}
    for label in ("whole", "circuit"):
        sides = []
        for lm, graph, keep, layers, split in jobs:
            for data in (split.discovery, split.held_out):
                if label == "whole":
                    sides.append(convert.residuals(lm, data, layers, bs))
                else:
                    sides.append(convert.circuit_parts(lm, graph, heads.circuit_sources(graph, keep), data, layers, bs))
        train_a, test_a, train_b, test_b = sides
        maps, rows = convert.fit_maps(train_a, train_b, test_a, test_b, pairs, alpha)
        fitted[label] = (maps, rows, test_a, test_b)
    return fitted
