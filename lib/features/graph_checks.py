"""How faithful an attribution graph is (lib.features.attribution): what it predicts for interventions against
the frozen and the real replacement model, error compounding as layers are replaced, sensitivity to the
pruning threshold, and a task's recurring graph features as a circuit under mean ablation.

Interventions set features of the prompt to new values in the replacement model with the clean prompt's error
nodes held constant: `frozen` with attention patterns and norm scales held at the clean prompt's values, `real`
with them recomputed (the model itself when nothing is edited); downstream MLPs are their transcoders plus the
constant errors. circuit-tracer's own feature_intervention differs (decoder_intervention): it runs the real
model and adds the edited feature's decoder change, so downstream MLPs respond as MLPs (`ct_default`); only its
constrained_layers mode (`ct_constrained`) is the direct effect. The
graph predicts the change of the task-metric node linearly: every other active feature responds to its
pre-activation change with slope 1 (Δa = (I - J)^-1 δ, J[u, t] = A[u, t] / a_t over feature nodes, the edited
features clamped), `direct` only along the metric row's own edges."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch


def _final_at_end(model, tokens: torch.Tensor, hooks: list) -> torch.Tensor:
    """The final normalized residual stream at the last position [B, d] of a pass with hooks."""
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    def stop(x, hook):
        raise StopAtLayerException(x)

    with torch.no_grad():
        return model.bridge.run_with_hooks(tokens, fwd_hooks=[*hooks, ("unembed.hook_in", stop)])[:, -1]


def clean_errors(model, tc, tokens: torch.Tensor) -> dict:
    """The prompt's error nodes {layer: [1, P, d]}, the constants of an intervention."""
    from lib.features.attribution import clean_state

    state = clean_state(model, tc, tokens.to(model.device))
    return {l: state["errors"][l][None] for l in range(tc.n_layers)}


def intervene(
    model, tc, tokens: torch.Tensor, edits: list, direction: torch.Tensor, frozen: bool, errors: dict | None = None
) -> torch.Tensor:
    """The metric direction's value [R] for each row's edits [(layer, position, feature, value), ...] (row r of
    the batch), clean errors constant (clean_errors, computed here unless given), attention and norms frozen or
    recomputed."""
    from lib.features.replacement import freeze_hooks, frozen_values, norms_through_hooks, replacement_hooks

    tokens = tokens.to(model.device)
    errors = clean_errors(model, tc, tokens) if errors is None else errors
    by_layer: dict = {}
    for r, row in enumerate(edits):
        for layer, pos, feat, value in row:
            by_layer.setdefault(layer, []).append((r, pos, feat, value))

    def edit(layer, f):
        if layer not in by_layer:
            return f
        r, p, i, v = (torch.tensor(c, device=f.device) for c in zip(*by_layer[layer]))
        f = f.clone()
        f[r, p, i] = v.to(f.dtype)
        return f

    hooks = replacement_hooks(tc, range(tc.n_layers), errors=errors, edit=edit)
    batch = tokens[None].expand(len(edits), -1)
    if frozen:
        values = frozen_values(model, tokens[None])
        with norms_through_hooks(model):
            final = _final_at_end(model, batch, freeze_hooks(model, values) + hooks)
    else:
        final = _final_at_end(model, batch, hooks)
    return final.double() @ direction.to(final.device).double()


def decoder_intervention(
    model, tc, tokens: torch.Tensor, edits: list, direction: torch.Tensor, constrained: bool
) -> torch.Tensor:
    """The metric direction's value [R] under circuit-tracer's feature_intervention (replacement_model_
    transformerlens.py: setup_intervention_with_freeze, _get_feature_intervention_hooks), row r with edits[r]
    [(layer, position, feature, value), ...]. It runs the real model, not the replacement: attention patterns
    frozen at the clean prompt's; at each edited feature's layer the feature's activation on this pass's input
    a is read and (value - a) x its decoder rows is added to the MLP outputs it writes. Default mode
    (constrained False): norm scales and every MLP live, so downstream MLPs respond. constrained_layers = every
    layer (True): norm scales and MLP outputs frozen at the clean prompt's, a from the clean pass: direct effects
    only, the graph's `predicted_direct`."""
    from lib.core.forward import capture
    from lib.features.replacement import freeze_hooks, frozen_values, norms_through_hooks

    tokens = tokens.to(model.device)
    by_layer: dict = {}
    for r, row in enumerate(edits):
        for layer, pos, feat, value in row:
            by_layer.setdefault(layer, []).append((r, pos, feat, value))
    with norms_through_hooks(model):
        frozen = frozen_values(model, tokens[None])
        clean = capture(model, tokens[None], sorted(set(tc.hooks_in + tc.hooks_out)))
    deltas: dict = {}  # output layer -> [R, P, d_out], filled as the pass reaches each edited layer

    def read(x, hook, layer):
        a = tc.encode(layer, clean[tc.hooks_in[layer]].expand_as(x) if constrained else x)
        r, p, i, v = (torch.tensor(c, device=a.device) for c in zip(*by_layer[layer]))
        change = torch.zeros_like(a)
        change[r, p, i] = v.to(a.dtype) - a[r, p, i]
        for j in range(tc.n_out(layer)):
            deltas[layer + j] = deltas.get(layer + j, 0) + change @ tc.W_dec[layer][:, j]
        return x

    live_inputs: dict = {}

    def keep_input(x, hook, layer):
        live_inputs[layer] = x
        return read(x, hook, layer) if layer in by_layer else x

    def write(x, hook, layer):
        base = clean[tc.hooks_out[layer]].expand_as(x) if constrained else x
        if constrained and tc.W_skip is not None:  # the skip connection stays a live linear path, as in the graph
            base = base + (tc.skip(layer, live_inputs[layer]) - tc.skip(layer, clean[tc.hooks_in[layer]])).to(x.dtype)
        return base + (deltas[layer].to(x.dtype) if layer in deltas else 0)

    hooks = [(n, f) for n, f in freeze_hooks(model, frozen) if constrained or n.endswith("hook_pattern")]
    read_layers = range(tc.n_layers) if tc.W_skip is not None else sorted(by_layer)
    hooks += [(tc.hooks_in[l], partial(keep_input, layer=l)) for l in read_layers]
    hooks += [(tc.hooks_out[l], partial(write, layer=l)) for l in range(tc.n_layers)]
    batch = tokens[None].expand(len(edits), -1)
    if constrained:  # frozen norm scales take effect only with the norms' own hooks in the path
        with norms_through_hooks(model):
            final = _final_at_end(model, batch, hooks)
    else:
        final = _final_at_end(model, batch, hooks)
    return final.double() @ direction.to(final.device).double()


def predicted(graph, nodes: list[int], values: list[float]) -> tuple[float, float]:
    """The graph's linear prediction of the metric change when feature nodes take values: (through the graph,
    direct edges only)."""
    nf = graph.n_features
    a = graph.activations[graph.selected].double()  # [nf]
    per_unit = graph.adjacency[:nf, :nf].double() / a[None]
    per_unit[nodes] = 0  # edited features are clamped
    delta = torch.zeros(nf, dtype=torch.float64)
    delta[nodes] = torch.tensor(values, dtype=torch.float64) - a[nodes]
    # (I - J)^-1 delta = delta + J delta + J^2 delta + ...: features read only earlier layers' outputs, so J is
    # nilpotent and the series ends after at most n_layers terms (matrix-vector products, not an n^3 solve)
    response, term = delta.clone(), delta
    for _ in range(graph.n_layers):
        term = per_unit @ term
        if not term.any():
            break
        response += term
    else:
        if (per_unit @ term).any():
            raise RuntimeError("the feature adjacency is not acyclic by layer")
    metric = graph.metric_row[:nf].double() / a
    return float(metric @ response), float(metric[nodes] @ delta[nodes])


def intervention_rows(
    model, tc, graph, influence: torch.Tensor, node_mask: torch.Tensor, direction: torch.Tensor, n_top: int
) -> list[dict]:
    """Ablate (0) and steer (x2) each of the pruned graph's n_top most influential features alone, and ablate
    them all together: the graph's predictions, the frozen and the real model's changes, and the gaps."""
    nf = graph.n_features
    kept = [i for i in torch.argsort(influence[:nf], descending=True, stable=True).tolist() if node_mask[i]][:n_top]
    if not kept:
        return []
    a = graph.activations[graph.selected]
    cases = [("ablate", [i], [0.0]) for i in kept] + [("steer x2", [i], [2 * float(a[i])]) for i in kept]
    if len(kept) > 1:
        cases.append(("ablate together", kept, [0.0] * len(kept)))

    def edit_of(nodes, values):
        return [(*graph.active[graph.selected[i]].tolist(), v) for i, v in zip(nodes, values)]

    edits = [[]] + [edit_of(nodes, values) for _, nodes, values in cases]
    errors = clean_errors(model, tc, graph.tokens)
    frozen = intervene(model, tc, graph.tokens, edits, direction, frozen=True, errors=errors)
    real = intervene(model, tc, graph.tokens, edits, direction, frozen=False, errors=errors)
    ct_default = decoder_intervention(model, tc, graph.tokens, edits, direction, constrained=False)
    ct_constrained = decoder_intervention(model, tc, graph.tokens, edits, direction, constrained=True)
    rows = []
    for r, (kind, nodes, values) in enumerate(cases, start=1):
        through, direct = predicted(graph, nodes, values)
        d_frozen, d_real = float(frozen[r] - frozen[0]), float(real[r] - real[0])
        d_ct, d_ct_constrained = float(ct_default[r] - ct_default[0]), float(ct_constrained[r] - ct_constrained[0])
        names = " ".join("{0}_{2}_{1}".format(*graph.active[graph.selected[i]].tolist()) for i in nodes)
        rows.append(
            {
                "intervention": kind,
                "features": names,
                "n_features": len(nodes),
                "influence": float(influence[nodes].sum()),
                "predicted_direct": direct,
                "predicted_graph": through,
                "frozen": d_frozen,
                "real": d_real,
                "gap_linear": d_frozen - through,
                "gap_attention": d_real - d_frozen,
                "gap": d_real - through,
                "ct_default": d_ct,
                "ct_constrained": d_ct_constrained,
                "baseline_frozen_minus_model": float(frozen[0]) - graph.metric_value,
            }
        )
    return rows


def compounding(model, sets: dict, data, batch_size: int) -> dict:
    """Per transcoder kind and k = 1..L layers replaced (the first k MLPs, no error nodes): per-prompt KL(model ||
    replacement) at the answer position and the task metric. {kind: {k: (kl [N], metric [N])}}."""
    from lib.core.forward import logits_at
    from lib.core.metrics import data_metric, kl_divergence
    from lib.features.replacement import replacement_hooks

    parts = {(kind, k): ([], []) for kind, tc in sets.items() for k in range(1, tc.n_layers + 1)}
    for start in range(0, len(data), batch_size):
        batch = data.subset(slice(start, start + batch_size))
        tokens, pos = batch.clean.to(model.device), batch.answer_pos.to(model.device)
        full = logits_at(model, tokens, pos)  # the model's own logits, once per batch
        for (kind, k), (kls, metrics) in parts.items():
            replaced = logits_at(model, tokens, pos, hooks=replacement_hooks(sets[kind], range(k)))
            kls.append(kl_divergence(full, replaced).cpu())
            metrics.append(data_metric(replaced, batch).cpu())
    out = {kind: {} for kind in sets}
    for (kind, k), (kls, metrics) in parts.items():
        out[kind][k] = (torch.cat(kls).numpy(), torch.cat(metrics).numpy())
    return out


def sensitivity_rows(
    graph, weights: torch.Tensor, thresholds: list[float], default: float, default_pruned, edge_threshold: float
) -> list[dict]:
    """Scores, node and edge counts of the graph pruned at each node threshold, and the Jaccard index of its
    feature and error nodes against those at the default threshold (default_pruned: that pruning, already done)."""
    from lib.features.influence import prune

    n_fe = graph.slices()["error"].stop
    full = full_scores(graph, weights)  # the same at every threshold
    base = set(default_pruned.node_mask[:n_fe].nonzero().flatten().tolist())
    rows = []
    for t in thresholds:
        p = (
            default_pruned
            if t == default
            else prune(graph.adjacency, weights, graph.n_features, graph.n_pos, graph.n_logits, t, edge_threshold)
        )
        kept = set(p.node_mask[:n_fe].nonzero().flatten().tolist())
        rows.append(
            {
                "node_threshold": t,
                **graph_scores(graph, weights, p, full),
                "jaccard_vs_default": len(kept & base) / len(kept | base) if kept | base else 1.0,
            }
        )  # both empty: equal
    return rows


def full_scores(graph, weights: torch.Tensor) -> dict:
    """Replacement and completeness scores of the full graph, its feature and edge counts."""
    from lib.features.influence import scores

    s = graph.slices()
    replacement, completeness = scores(
        graph.adjacency, weights, graph.n_features, s["error"].stop - s["error"].start, graph.n_pos
    )
    return {
        "replacement_full": replacement,
        "completeness_full": completeness,
        "features_full": graph.n_features,
        "edges_full": int((graph.adjacency != 0).sum()),
    }


def graph_scores(graph, weights: torch.Tensor, pruned, full: dict | None = None) -> dict:
    """full_scores (computed unless given) and the pruned graph's scores (its adjacency with the edges outside the
    edge mask zeroed) and its node and edge counts."""
    from lib.features.influence import scores

    s = graph.slices()
    full = full_scores(graph, weights) if full is None else full
    part = scores(
        graph.adjacency * pruned.edge_mask, weights, graph.n_features, s["error"].stop - s["error"].start, graph.n_pos
    )
    mask = pruned.node_mask
    return {
        "replacement_full": full["replacement_full"],
        "completeness_full": full["completeness_full"],
        "replacement_pruned": part[0],
        "completeness_pruned": part[1],
        "features_full": full["features_full"],
        "features_pruned": int(mask[s["feature"]].sum()),
        "errors_pruned": int(mask[s["error"]].sum()),
        "edges_full": full["edges_full"],
        "edges_pruned": int(pruned.edge_mask.sum()),
    }


def node_keys(graph, pruned) -> dict:
    """The pruned graph's feature and error nodes -> influence, keyed (kind, layer, feature, offset from the
    last position) so that prompts of different lengths align; error nodes have feature -1."""
    s = graph.slices()
    out = {}
    for i in pruned.node_mask[: s["error"].stop].nonzero().flatten().tolist():
        if i < s["feature"].stop:
            layer, pos, feat = graph.active[graph.selected[i]].tolist()
            key = ("feature", layer, feat, graph.n_pos - 1 - pos)
        else:
            layer, pos = divmod(i - s["error"].start, graph.n_pos)
            key = ("error", layer, -1, graph.n_pos - 1 - pos)
        out[key] = float(pruned.influence[i])
    return out


def mean_values(model, tc, data, batch_size: int) -> tuple[dict, dict]:
    """Per layer the mean features [P, d_sae] and error nodes [P, d] over the corrupted prompts, at each
    position over the prompts that reach it (part 1's mean ablation, lib.features.ablate)."""
    from lib.features.replacement import replacement_hooks

    width = data.clean.shape[1]
    sums_f, sums_e, count = {}, {}, torch.zeros(width, 1, device=model.device)
    for start in range(0, len(data), batch_size):
        batch = data.subset(slice(start, start + batch_size))
        real = torch.nn.functional.pad(batch.real.to(model.device), (0, width - batch.clean.shape[1]))[
            ..., None
        ].float()
        store, errs = {}, {}

        def keep_error(l, e, errs=errs):
            errs[l] = e
            return e

        _final_at_end(
            model,
            batch.corrupt.to(model.device),
            replacement_hooks(tc, range(tc.n_layers), errors="live", store=store, edit_error=keep_error),
        )
        count += real.sum(0)
        for l in range(tc.n_layers):
            pad = (0, 0, 0, width - store[l].shape[1])
            f = (torch.nn.functional.pad(store[l], pad) * real).sum(0)
            e = (torch.nn.functional.pad(errs[l], pad) * real).sum(0)
            sums_f[l], sums_e[l] = sums_f.get(l, 0) + f, sums_e.get(l, 0) + e
    c = count.clamp_min(1)
    return {l: v / c for l, v in sums_f.items()}, {l: v / c for l, v in sums_e.items()}


def circuit_masks(tc, data, circuit: set, complement: bool = False) -> tuple[dict, dict]:
    """Keep masks per layer, features [N, P, d_sae] and errors [N, P], of a circuit of node keys (node_keys);
    position 0 (the graphs' constant BOS position) is always kept."""
    n, width = data.clean.shape
    feats = {l: torch.zeros(n, width, tc.d_sae, dtype=torch.bool) for l in range(tc.n_layers)}
    errs = {l: torch.zeros(n, width, dtype=torch.bool) for l in range(tc.n_layers)}
    last = (data.lengths - 1).tolist()
    for kind, layer, feat, offset in circuit:
        for row, end in enumerate(last):
            pos = end - offset
            if pos >= 1:
                if kind == "feature":
                    feats[layer][row, pos, feat] = True
                else:
                    errs[layer][row, pos] = True
    if complement:
        feats, errs = {l: ~m for l, m in feats.items()}, {l: ~m for l, m in errs.items()}
    for l in range(tc.n_layers):
        feats[l][:, 0], errs[l][:, 0] = True, True
    return feats, errs


def ablated_metric(model, tc, data, masks: tuple, means: tuple, batch_size: int) -> np.ndarray:
    """The task metric [N] with every feature and error node outside the masks at its mean (live errors)."""
    from lib.core.forward import logits_at
    from lib.core.metrics import data_metric
    from lib.features.replacement import replacement_hooks

    keep_f, keep_e = masks
    mean_f, mean_e = means
    out = []
    for start in range(0, len(data), batch_size):
        batch = data.subset(slice(start, start + batch_size))
        rows, p = slice(start, start + len(batch)), batch.clean.shape[1]

        def edit(l, f, rows=rows, p=p):
            return torch.where(keep_f[l][rows, :p].to(f.device), f, mean_f[l][:p].to(f.dtype))

        def edit_error(l, e, rows=rows, p=p):
            return torch.where(keep_e[l][rows, :p, None].to(e.device), e, mean_e[l][:p].to(e.dtype))

        hooks = replacement_hooks(tc, range(tc.n_layers), errors="live", edit=edit, edit_error=edit_error)
        logits = logits_at(model, batch.clean.to(model.device), batch.answer_pos.to(model.device), hooks=hooks)
        out.append(data_metric(logits, batch).cpu())
    return torch.cat(out).numpy()
