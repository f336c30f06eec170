"""Attribution graphs (10_attribution_graphs.py): the frozen replacement model reproduces the model; every
adjacency column is exactly what removing that source changes in an independent frozen forward pass (no
autograd), for per-layer and cross-layer transcoders; influence, pruning and scores against a direct numpy
implementation and circuit-tracer's published toy case; the frontend JSON against its field list; CLT files in
circuit-tracer's layout; a complete run and bad input."""

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import completed_run, refused, run_cli


@pytest.fixture(scope="module")
def sets(toy):
    from lib.core.model import TOY_DIR
    from lib.features import files, transcoders

    loaded = files.read_set(TOY_DIR / "dictionaries")
    return {"plt": transcoders.from_dictionaries(loaded, toy.n_layers, "toy"), "clt": loaded["clt"]}


@pytest.fixture(scope="module")
def prompt(toy):
    from tasks import TASKS

    data = TASKS["ioi"].build(toy.tokenizer, 4, 0)
    return data, data.clean[1, : int(data.lengths[1])]


@pytest.fixture(scope="module")
def graphs(toy, sets, prompt):
    from lib.features.attribution import attribute, metric_direction

    data, tokens = prompt
    direction = metric_direction(toy.bridge.W_U.detach(), data.correct[1], data.wrong[1])
    return {
        k: attribute(toy, tc, tokens, direction, batch_size=48, desired_logit_prob=0.99999) for k, tc in sets.items()
    }


def frozen_targets(toy, tc, graph, tokens, mlp_out, embed):
    """Each node's target value (feature pre-activation, demeaned logit) and the metric node's value in a forward
    pass with patterns and norm scales at the clean prompt's values and MLP outputs and token embeddings set."""
    from lib.features.replacement import freeze_hooks, frozen_values, norms_through_hooks

    cache = {}

    def keep(name):
        def hook(x, hook):
            cache[name] = x
            return x

        return hook

    hooks = freeze_hooks(toy, frozen_values(toy, tokens[None])) + [("hook_embed", lambda x, hook: embed[None])]
    hooks += [(tc.hooks_out[l], lambda x, hook, l=l: mlp_out[l][None]) for l in range(tc.n_layers)]
    hooks += [(h, keep(h)) for h in tc.hooks_in] + [("unembed.hook_in", keep("final"))]
    with norms_through_hooks(toy), torch.no_grad():
        toy.bridge.run_with_hooks(tokens[None], fwd_hooks=hooks)
    sel = graph.active[graph.selected]
    values = torch.zeros(graph.adjacency.shape[0], dtype=torch.float64)
    pre = torch.stack([tc.pre(l, cache[tc.hooks_in[l]][0]) for l in range(tc.n_layers)])
    values[: graph.n_features] = pre[sel[:, 0], sel[:, 1], sel[:, 2]].double()
    logits = cache["final"][0, -1] @ toy.bridge.W_U + toy.bridge.b_U
    values[-graph.n_logits :] = (logits[graph.logit_tokens] - logits.mean()).double()
    return values


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_adjacency_columns_are_exact_direct_effects(toy, sets, prompt, graphs, kind):
    from lib.features.attribution import clean_state

    tc, graph, (_, tokens) = sets[kind], graphs[kind], prompt
    state = clean_state(toy, tc, tokens)
    mlp, embed = state["mlp_out"], state["embed"]
    base = frozen_targets(toy, tc, graph, tokens, mlp, embed)
    torch.testing.assert_close(base, graph.targets, atol=1e-5, rtol=0)  # the frozen pass is the model's pass
    s, P = graph.slices(), graph.n_pos
    assert graph.n_logits > 1  # several logit targets (desired probability 0.99999)

    def check(column, mlp_removed, embed_removed):
        delta = base - frozen_targets(toy, tc, graph, tokens, mlp_removed, embed_removed)
        torch.testing.assert_close(delta, graph.adjacency[:, column].double(), atol=2e-5, rtol=0)
        assert graph.adjacency[:, column].abs().max() > 1e-4  # a column with effects, not a vacuous zero

    # an error node
    layer, pos = 2, P - 1
    removed = [m.clone() for m in mlp]
    removed[layer][pos] -= state["errors"][layer][pos]
    check(s["error"].start + layer * P + pos, removed, embed)
    # the most influential-looking features: one per source layer (a CLT feature writes every later layer)
    for source in range(tc.n_layers - 1):
        j = next(
            i
            for i in range(graph.n_features)
            if graph.active[graph.selected[i], 0] == source and graph.adjacency[:, i].abs().max() > 1e-3
        )
        layer, pos, feat = graph.active[graph.selected[j]].tolist()
        a = graph.activations[graph.selected[j]]
        removed = [m.clone() for m in mlp]
        for o in range(tc.n_out(layer)):
            removed[layer + o][pos] -= a * tc.W_dec[layer][feat, o]
        check(j, removed, embed)
    # a token
    removed_embed = embed.clone()
    removed_embed[3] = 0
    check(s["token"].start + 3, mlp, removed_embed)
    # every row sums to its target minus the constant left with every source removed
    nothing = [mlp[l] - state["errors"][l] - (tc.write(l, state["features"]) - tc.b_dec[l]) for l in range(tc.n_layers)]
    for l in range(tc.n_layers):  # position 0 (BOS) is no node: its MLP output stays as it is
        nothing[l][0] = mlp[l][0]
    constant = frozen_targets(toy, tc, graph, tokens, nothing, torch.zeros_like(embed))
    rows = graph.adjacency.double().sum(1)
    targets = slice(0, graph.n_features), s["logit"]
    for part in targets:
        torch.testing.assert_close(rows[part], (base - constant)[part], atol=5e-5, rtol=0)


def test_frozen_and_real_replacement_reproduce_the_model(toy, sets, prompt):
    from lib.core.forward import logits_at
    from lib.features import graph_checks
    from lib.features.attribution import clean_state
    from lib.features.replacement import freeze_hooks, frozen_values, norms_through_hooks, replacement_hooks

    _, tokens = prompt
    model_logits = logits_at(toy, tokens[None], torch.tensor([len(tokens) - 1]))
    for tc in sets.values():
        errors = {l: e[None] for l, e in enumerate(clean_state(toy, tc, tokens)["errors"])}
        with norms_through_hooks(toy):
            hooks = freeze_hooks(toy, frozen_values(toy, tokens[None])) + replacement_hooks(tc, range(4), errors=errors)
            frozen = logits_at(toy, tokens[None], torch.tensor([len(tokens) - 1]), hooks=hooks)
        torch.testing.assert_close(frozen, model_logits, atol=1e-5, rtol=0)
        live = logits_at(
            toy, tokens[None], torch.tensor([len(tokens) - 1]), hooks=replacement_hooks(tc, range(4), errors="live")
        )
        torch.testing.assert_close(live, model_logits, atol=1e-5, rtol=0)
        direction = torch.zeros(toy.d_model)
        direction[0] = 1.0
        for frozen_attention in (True, False):
            value = graph_checks.intervene(toy, tc, tokens, [[]], direction, frozen_attention)
            assert abs(float(value[0]) - float(clean_state(toy, tc, tokens)["final"][-1, 0])) < 1e-5


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_linear_prediction_matches_a_small_steer_in_the_frozen_model(toy, sets, prompt, graphs, kind):
    from lib.features import graph_checks
    from lib.features.attribution import metric_direction

    data, tokens = prompt
    graph = graphs[kind]
    direction = metric_direction(toy.bridge.W_U.detach(), data.correct[1], data.wrong[1])
    metric = graph.metric_row[: graph.n_features].abs()
    node = int(torch.argmax(metric))
    a = float(graph.activations[graph.selected[node]])
    edit = [(*graph.active[graph.selected[node]].tolist(), a * 1.05)]  # (layer, position, feature, value)
    frozen = graph_checks.intervene(toy, sets[kind], tokens, [[], edit], direction, frozen=True)
    through, direct = graph_checks.predicted(graph, [node], [a * 1.05])
    assert abs(float(frozen[1] - frozen[0]) - through) < 0.02 * abs(through) + 1e-6
    assert np.isclose(direct, 0.05 * float(graph.metric_row[node]))


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_circuit_tracers_intervention_semantics_by_hand(toy, sets, prompt, graphs, kind):
    """ct_default: a hand-written run of the real model with the patterns frozen and the feature's decoder change
    added where it writes (an edit at one layer leaves its own input, hence its activation, as in the clean pass);
    ct_constrained: the graph's direct prediction."""
    from lib.core.forward import capture
    from lib.features import graph_checks
    from lib.features.attribution import metric_direction

    data, tokens = prompt
    graph, tc = graphs[kind], sets[kind]
    direction = metric_direction(toy.bridge.W_U.detach(), data.correct[1], data.wrong[1])
    metric = graph.metric_row[: graph.n_features].abs()
    nodes = torch.argsort(metric, descending=True)[:3].tolist()
    edits = [[]]
    for node in nodes:
        layer, pos, feat = graph.active[graph.selected[node]].tolist()
        edits += [[(layer, pos, feat, 0.0)], [(layer, pos, feat, 2 * float(graph.activations[graph.selected[node]]))]]
    ct = graph_checks.decoder_intervention(toy, tc, tokens, edits, direction, constrained=False)
    constrained = graph_checks.decoder_intervention(toy, tc, tokens, edits, direction, constrained=True)
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(toy.n_layers)]
    patterns = capture(toy, tokens[None], names)
    for r, row in enumerate(edits[1:], start=1):
        ((layer, pos, feat, value),) = row
        node = nodes[(r - 1) // 2]
        a = float(graph.activations[graph.selected[node]])
        hooks: list[tuple[str, Callable]] = [(n, lambda x, hook, n=n: patterns[n]) for n in names]
        for j in range(tc.n_out(layer)):

            def add(x, hook, j=j, pos=pos, value=value, a=a, layer=layer, feat=feat):
                x = x.clone()
                x[:, pos] += (value - a) * tc.W_dec[layer][feat, j].to(x.dtype)
                return x

            hooks.append((tc.hooks_out[layer + j], add))
        by_hand = graph_checks._final_at_end(toy, tokens[None], hooks)[0].double() @ direction.double()
        assert abs(float(ct[r]) - float(by_hand)) < 1e-5 * (1 + abs(float(by_hand))), (r, float(ct[r]), float(by_hand))
        _, direct = graph_checks.predicted(graph, [node], [value])
        assert abs(float(constrained[r] - constrained[0]) - direct) < 1e-5 * (1 + abs(direct)), (r, direct)
    assert abs(float(ct[0]) - graph.metric_value) < 1e-4  # nothing edited: the model itself


def test_max_feature_nodes_keeps_the_full_graphs_rows(toy, sets, prompt, graphs):
    from lib.features.attribution import attribute, metric_direction

    data, tokens = prompt
    full = graphs["plt"]
    direction = metric_direction(toy.bridge.W_U.detach(), data.correct[1], data.wrong[1])
    small = attribute(
        toy, sets["plt"], tokens, direction, batch_size=7, max_feature_nodes=40, desired_logit_prob=0.99999
    )
    assert small.n_features == 40 and len(small.selected.unique()) == 40
    keep = torch.cat([small.selected, torch.arange(full.n_features, full.adjacency.shape[0])])  # full: every feature
    torch.testing.assert_close(small.adjacency, full.adjacency[keep][:, keep], atol=1e-6, rtol=0)
    # the features chosen first are those with the largest influence through the logit rows
    from lib.features.influence import partial_influence

    rows_logit = full.adjacency[-full.n_logits :, : full.adjacency.shape[0] - full.n_logits]
    first = partial_influence(
        rows_logit, full.logit_probs, torch.arange(full.n_logits) + rows_logit.shape[1], full.adjacency.shape[0]
    )[: full.n_features]
    top = set(torch.argsort(first, descending=True, stable=True)[:7].tolist())
    assert top <= set(small.selected.tolist())


def numpy_influence(adjacency, weights):
    a = np.abs(adjacency)
    sums = a.sum(1, keepdims=True)
    a = a / np.maximum(sums, 1e-10)
    n = len(a)
    return weights @ (np.linalg.inv(np.eye(n) - a) - np.eye(n)), a


def test_influence_pruning_and_scores_against_numpy():
    from lib.features.influence import edge_influence, node_influence, prune, scores

    # circuit-tracer's published small graph (tests/test_graph.py): 12 nodes, one logit, all edges weight 10
    edges = [(11, 1), (11, 3), (11, 6), (11, 8), (3, 0), (3, 1), (3, 6), (1, 9), (1, 10), (0, 9)]
    adjacency = torch.zeros(12, 12)
    for t, s in edges:
        adjacency[t, s] = 10.0
    w = torch.zeros(12)
    w[-1] = 1.0
    expected = torch.tensor([1 / 12, 1 / 3, 0, 1 / 4, 0, 0, 1 / 3, 0, 1 / 4, 1 / 4, 1 / 6, 0])
    torch.testing.assert_close(node_influence(adjacency, w), expected)
    pruned = adjacency.clone()
    pruned[0, 9] = pruned[3, 0] = 0
    by_hand = torch.zeros(12, 12)
    for t, s, v in [
        (11, 1, 1 / 4),
        (11, 3, 1 / 4),
        (11, 6, 1 / 4),
        (11, 8, 1 / 4),
        (3, 1, 1 / 8),
        (3, 6, 1 / 8),
        (1, 9, 3 / 16),
        (1, 10, 3 / 16),
    ]:
        by_hand[t, s] = v
    torch.testing.assert_close(edge_influence(pruned, w), by_hand)
    # a random acyclic graph: influence and scores against numpy's matrix inverse
    rng = np.random.default_rng(0)
    nf, ne, nt, nl = 9, 6, 3, 2
    n = nf + ne + nt + nl
    a = rng.normal(size=(n, n)) * (rng.random((n, n)) < 0.5)
    order = np.r_[rng.permutation(nf) + nt, np.arange(nt), rng.permutation(ne) + nf + nt]  # a topological order
    rank = np.empty(n, int)
    rank[np.r_[np.arange(nf), np.arange(nf + ne, nf + ne + nt), np.arange(nf, nf + ne)]] = np.argsort(order)
    a[:, nf + ne + nt :] = 0  # logits are no sources
    a[nf : nf + ne + nt] = 0  # errors and tokens have no inputs
    for i in range(nf):
        a[i, :nf] *= rank[:nf] < rank[i]  # a feature reads earlier features only
    probs = np.array([0.7, 0.2])
    weights = np.r_[np.zeros(n - nl), probs]
    infl, normalized = numpy_influence(a, weights)
    A, W = torch.tensor(a, dtype=torch.float64), torch.tensor(weights)
    np.testing.assert_allclose(node_influence(A, W).numpy(), infl, atol=1e-12)
    replacement = infl[nf + ne : nf + ne + nt].sum() / (infl[nf + ne : nf + ne + nt].sum() + infl[nf : nf + ne].sum())
    completeness = ((1 - normalized[:, nf : nf + ne].sum(1)) * (infl + weights)).sum() / (infl + weights).sum()
    np.testing.assert_allclose(scores(A, W, nf, ne, nt), (replacement, completeness), atol=1e-12)
    # pruning: nodes by the influence threshold, then edges, then the dangling-node rule, by hand in numpy
    p = prune(A, W, nf, nt, nl, 0.8, 0.98)

    def threshold(values, share):
        ordered = np.sort(values)[::-1]
        cumulative = np.cumsum(ordered) / ordered.sum()
        return ordered[min(np.searchsorted(cumulative, share), len(ordered) - 1)]

    keep = infl >= threshold(infl, 0.8)
    keep[n - nl - nt :] = True
    b = a * keep[:, None] * keep[None]
    infl_b, norm_b = numpy_influence(b, weights)
    edge_scores = norm_b * (infl_b + weights)[:, None]
    edge_keep = edge_scores >= threshold(edge_scores.ravel(), 0.98)
    while True:
        edge_keep &= keep[:, None] & keep[None]
        new = keep.copy()
        new[: n - nl - nt] &= edge_keep[:, : n - nl - nt].any(0)
        new[:nf] &= edge_keep[:nf].any(1)
        if (new == keep).all():
            break
        keep = new
    np.testing.assert_array_equal(p.node_mask.numpy(), keep)
    np.testing.assert_array_equal(p.edge_mask.numpy(), edge_keep & keep[:, None] & keep[None])
    # extreme cases: tokens reach the logit only through features: both scores 1; the logit reads only an error
    # node: replacement 0, completeness (0 * 1 + 1 * 1) / 2 = 1/2 (the error node, with no inputs of its own,
    # counts as fully explained by circuit-tracer's definition; the logit, all of whose input is error, as 0)
    through = torch.zeros(5, 5)  # nodes: feature 0, error 1, token 2 and 3, logit 4
    through[0, 2], through[0, 3], through[4, 0] = 1.0, -2.0, 3.0
    assert scores(through, torch.tensor([0, 0, 0, 0, 1.0]), 1, 1, 2) == (1.0, 1.0)
    errors_only = torch.zeros(5, 5)
    errors_only[4, 1] = 2.0
    assert scores(errors_only, torch.tensor([0, 0, 0, 0, 1.0]), 1, 1, 2) == (0.0, 0.5)


# circuit-tracer's frontend models (frontend/graph_models.py), written out: field -> JSON types; required fields
NODE = {
    "node_id": (str,),
    "feature": (int,),
    "layer": (str,),
    "ctx_idx": (int,),
    "feature_type": (str,),
    "token_prob": (float, int),
    "is_target_logit": (bool,),
    "run_idx": (int,),
    "reverse_ctx_idx": (int,),
    "jsNodeId": (str,),
    "clerp": (str,),
    "influence": (float, int, type(None)),
    "activation": (float, int, type(None)),
}
NODE_REQUIRED = {"node_id", "feature", "layer", "ctx_idx", "feature_type"}
METADATA = {
    "slug": (str,),
    "scan": (str,),
    "transcoder_list": (list,),
    "prompt_tokens": (list,),
    "prompt": (str,),
    "node_threshold": (float, int, type(None)),
    "schema_version": (int, type(None)),
}
QPARAMS = {"pinnedIds": (list,), "supernodes": (list,), "linkType": (str,), "clickedId": (str,), "sg_pos": (str,)}


def validate_frontend(model: dict) -> None:
    assert set(model) == {"metadata", "qParams", "nodes", "links"}
    assert set(METADATA) - {"node_threshold", "schema_version"} <= set(model["metadata"]) <= set(METADATA)
    for name, value in model["metadata"].items():
        assert isinstance(value, METADATA[name]), name
    assert set(model["qParams"]) == set(QPARAMS) and all(isinstance(model["qParams"][k], t) for k, t in QPARAMS.items())
    ids = set()
    for node in model["nodes"]:
        assert NODE_REQUIRED <= set(node) <= set(NODE), node
        for name, value in node.items():
            assert isinstance(value, NODE[name]) and not (name == "feature" and isinstance(value, bool)), (name, value)
        ids.add(node["node_id"])
    assert len(ids) == len(model["nodes"])
    for link in model["links"]:
        assert set(link) == {"source", "target", "weight"} and link["source"] in ids and link["target"] in ids
        assert isinstance(link["weight"], float)


def test_frontend_json_validates_round_trips_and_names_tokens_and_logits(toy, prompt, graphs):
    from lib.features.influence import logit_weights, prune
    from lib.io import graph_json

    _, tokens = prompt
    graph = graphs["plt"]
    p = prune(
        graph.adjacency,
        logit_weights(graph.adjacency.shape[0], graph.logit_probs),
        graph.n_features,
        graph.n_pos,
        graph.n_logits,
    )
    text = toy.tokenizer.decode(tokens.tolist()[1:])
    model = graph_json.frontend(graph, p, lambda t: toy.tokenizer.decode([t]), "ioi_1", "toy-plt", 0.8, text)
    validate_frontend(model)
    assert model["metadata"]["prompt"] == text and not text.startswith("<|endoftext|>")
    # error nodes: {layer}_-1_{pos}, never circuit-tracer's 0_{layer}_{pos}, which a layer-0 feature can also be
    ids_all = graph_json.node_ids(graph)
    errors = ids_all[graph.slices()["error"]]
    assert errors[:2] == ["0_-1_0", "0_-1_1"] and len(set(ids_all)) == len(ids_all)
    assert json.loads(json.dumps(model)) == model
    ids = {n["node_id"]: n for n in model["nodes"]}
    for pos, t in enumerate(tokens.tolist()):  # every prompt token is a node, E_{id}_{pos}
        assert ids[f"E_{t}_{pos}"]["feature_type"] == "embedding"
    top = int(graph.logit_tokens[0])
    logit = ids[f"{toy.n_layers + 1}_{top}_{len(tokens) - 1}"]
    assert logit["is_target_logit"] and logit["clerp"].startswith(f'Output "{toy.tokenizer.decode([top])}"')
    assert model["metadata"]["prompt_tokens"] == [toy.tokenizer.decode([t]) for t in tokens.tolist()]
    broken = json.loads(json.dumps(model))
    broken["nodes"][0]["ctx_idx"] = "0"
    with pytest.raises(AssertionError):  # the check catches a damaged field
        validate_frontend(broken)


def test_clt_files_round_trip_and_read_circuit_tracers_layout(tmp_path, sets):
    from safetensors.torch import save_file

    from lib.features import files, transcoders

    clt = sets["clt"]
    transcoders.write_clt(tmp_path / "copy", clt)
    back = transcoders.read_clt(tmp_path / "copy")
    for a, b in zip(clt.W_enc + clt.W_dec + clt.b_enc, back.W_enc + back.W_dec + back.b_enc):
        assert torch.equal(a, b)
    assert back.hooks_in == clt.hooks_in and back.k == clt.k and back.architecture == "topk"
    # a folder written by hand as circuit-tracer's to_safetensors does, without our cfg.json: JumpReLU
    g = torch.Generator().manual_seed(0)
    folder = tmp_path / "ct"
    folder.mkdir()
    for l in range(2):
        save_file(
            {
                f"W_enc_{l}": torch.randn(5, 3, generator=g),
                f"b_enc_{l}": torch.zeros(5),
                f"b_dec_{l}": torch.zeros(3),
                f"threshold_{l}": torch.full((5,), 0.5),
            },
            str(folder / f"W_enc_{l}.safetensors"),
        )
        save_file({f"W_dec_{l}": torch.randn(5, 2 - l, 3, generator=g)}, str(folder / f"W_dec_{l}.safetensors"))
    ct = files.read_set(folder)["ct"]
    assert (
        ct.kind == "clt"
        and ct.architecture == "jumprelu"
        and ct.hooks_in == ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_mid"]
    )
    x = torch.randn(4, 3, generator=g)
    pre = x @ ct.W_enc[1] + ct.b_enc[1]
    torch.testing.assert_close(ct.encode(1, x), torch.where(pre > 0.5, pre, torch.zeros_like(pre)))
    f = {0: ct.encode(0, x), 1: ct.encode(1, x)}
    torch.testing.assert_close(ct.write(1, f), f[0] @ ct.W_dec[0][:, 1] + f[1] @ ct.W_dec[1][:, 0])
    (folder / "W_dec_1.safetensors").unlink()
    with pytest.raises(Exception, match="missing W_dec_1.safetensors"):
        transcoders.read_clt(folder)


def test_task_circuit_ablation_is_part_ones(toy, sets):
    """The task circuit's mean ablation equals lib.features.ablate (Marks et al.'s run_with_ablations) on the
    per-layer transcoders, for a circuit, its complement and the empty circuit."""
    from lib.core.model import TOY_DIR
    from lib.features import ablate, files, graph_checks
    from tasks import TASKS

    data = TASKS["sva"].build(toy.tokenizer, 6, 1)
    dicts = {n: d for n, d in files.read_set(TOY_DIR / "dictionaries").items() if n.startswith("tc")}
    tc = sets["plt"]
    means = graph_checks.mean_values(toy, tc, data, 4)
    values = ablate.reference_values(toy, dicts, data, "mean", 4)
    circuit = {("feature", 1, 7, 0), ("feature", 2, 30, 1), ("error", 3, -1, 0), ("error", 0, -1, 2)}
    for keys, complement in ((circuit, False), (circuit, True), (set(), False)):
        masks = graph_checks.circuit_masks(tc, data, keys, complement)
        ours = graph_checks.ablated_metric(toy, tc, data, masks, means, 4)
        keep = {f"tc{l}": {"features": masks[0][l], "error": masks[1][l]} for l in range(4)}
        theirs = ablate.ablated_metric(toy, dicts, data, keep, values, batch_size=4).numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_compounding_replaces_what_part_one_splices(toy, sets):
    from lib.core.forward import logits_at
    from lib.core.metrics import kl_divergence
    from lib.core.model import TOY_DIR
    from lib.features import files, graph_checks
    from lib.features.splice import splice_hooks
    from tasks import TASKS

    data = TASKS["docstring"].build(toy.tokenizer, 5, 2)
    out = graph_checks.compounding(toy, {"plt": sets["plt"]}, data, 3)
    dicts = {n: d for n, d in files.read_set(TOY_DIR / "dictionaries").items() if n in ("tc0", "tc1")}
    full = logits_at(toy, data.clean, data.answer_pos)
    spliced = logits_at(toy, data.clean, data.answer_pos, hooks=splice_hooks(dicts, with_error=False))
    np.testing.assert_allclose(out["plt"][2][0], kl_divergence(full, spliced).numpy(), atol=1e-6)


def test_complete_run_on_toy(tmp_path):
    run = completed_run(
        tmp_path,
        "10_attribution_graphs.py",
        "--tasks",
        "ioi",
        "greater-than",
        "--model",
        "toy",
        "--n-prompts",
        "8",
        "--n-graphs",
        "2",
        "--n-intervene",
        "2",
        "--n-bootstrap",
        "40",
        "--quiet",
    )
    names = {p.name for p in run.iterdir()}
    for task in ("ioi", "greater-than"):
        assert {
            f"compounding_{task}.png",
            f"sensitivity_{task}.png",
            f"interventions_{task}.png",
            f"task_features_{task}.png",
        } <= names
    assert {
        "scores.csv",
        "interventions.csv",
        "compounding.csv",
        "sensitivity.csv",
        "task_features.csv",
        "task_circuit.csv",
        "headline.csv",
        "run.json",
    } <= names
    graphs = {p.name for p in (run / "graphs").iterdir()}
    assert {
        f"{t}_{i}.{x}" for t in ("ioi", "greater-than") for i in (0, 1) for x in ("json", "npz", "png", "dot")
    } <= graphs
    index = json.loads((run / "graphs" / "graph-metadata.json").read_text())
    assert sorted(g["slug"] for g in index["graphs"]) == ["greater-than_0", "greater-than_1", "ioi_0", "ioi_1"]
    model = json.loads((run / "graphs" / "ioi_0.json").read_text())
    validate_frontend(model)
    saved = np.load(run / "graphs" / "ioi_0.npz")
    scores = pd.read_csv(run / "scores.csv")
    row = scores[scores.graph == "ioi_0"].iloc[0]
    assert saved["adjacency"].shape[0] == row.features_full + 5 * row.positions + row.logit_nodes
    assert len([n for n in model["nodes"] if n["feature_type"] == "cross layer transcoder"]) == row.features_pruned
    assert ((scores.replacement_full > 0) & (scores.replacement_full <= 1)).all()
    comp = pd.read_csv(run / "compounding.csv")
    assert set(comp.transcoders) == {"plt", "clt"} and set(comp.layers_replaced) == {1, 2, 3, 4}
    sens = pd.read_csv(run / "sensitivity.csv")
    assert np.allclose(sens[sens.node_threshold == 0.8].jaccard_vs_default, 1.0)
    sweep = pd.read_csv(run / "sensitivity_summary.csv")  # means over each task's graphs, by threshold
    by_hand = sens.groupby(["task", "node_threshold"]).features_pruned.mean()
    assert len(sweep) == len(by_hand) and np.allclose(
        sweep.set_index(["task", "node_threshold"]).features_pruned,
        by_hand.loc[list(zip(sweep.task, sweep.node_threshold))],
    )
    assert (sweep.jaccard_vs_default_ci_low <= sweep.jaccard_vs_default + 1e-12).all()
    inter = pd.read_csv(run / "interventions.csv")
    assert (inter.baseline_frozen_minus_model.abs() < 1e-4).all()
    np.testing.assert_allclose(inter.gap, inter.real - inter.predicted_graph)
    headline = pd.read_csv(run / "headline.csv")
    assert {"replacement_score", "completeness_score", "intervention_gap_mean_abs"} <= set(headline.metric)


def test_the_same_seed_gives_byte_identical_csvs(tmp_path):
    runs = [
        completed_run(
            tmp_path / name,
            "10_attribution_graphs.py",
            "--tasks",
            "sva",
            "--model",
            "toy",
            "--n-prompts",
            "4",
            "--n-graphs",
            "2",
            "--n-bootstrap",
            "40",
            "--quiet",
        )
        for name in "ab"
    ]
    csvs = sorted(p.name for p in runs[0].glob("*.csv"))
    assert len(csvs) >= 8 and csvs == sorted(p.name for p in runs[1].glob("*.csv"))
    for name in csvs:
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    assert (runs[0] / "graphs" / "sva_1.json").read_bytes() == (runs[1] / "graphs" / "sva_1.json").read_bytes()


def test_bad_input_is_one_line(tmp_path):
    def refused_with(args, message):
        refused(run_cli("10_attribution_graphs.py", "--model", "toy", "--out", str(tmp_path / "o"), *args), message)

    refused_with(["--n-graphs", "0"], "--n-graphs must be between 1 and 1,000")
    refused_with(["--transcoders", "sae"], "unknown --transcoders 'sae'")
    refused_with(["--node-threshold", "1.5"], "--node-threshold must be between 0 and 1")
    only_saes = tmp_path / "saes"
    from lib.core.model import TOY_DIR
    from lib.features import files

    files.write(only_saes / "resid0", files.read(TOY_DIR / "dictionaries" / "resid0"))
    refused_with(["--tasks", "ioi", "--dictionaries", str(only_saes)], "per-layer transcoders cover layers none of 4")
    refused_with(
        ["--tasks", "ioi", "--dictionaries", str(only_saes), "--transcoders", "clt"], "no cross-layer transcoder"
    )
    from conftest import ROOT

    pairs = pd.read_csv(ROOT / "tasks" / "examples" / "ioi_pairs.csv").head(4)
    more = " Mark gave a basketball to" * 12  # the same words on both sides: equal lengths, past the toy's 64 positions
    pairs["clean"], pairs["corrupted"] = pairs.clean + more, pairs.corrupted + more
    task = tmp_path / "long.csv"
    pairs.to_csv(task, index=False)
    refused_with(["--tasks", str(task), "--n-prompts", "2", "--n-graphs", "1"], "longer than model toy's context of 64")
    refused_with(["--tasks", "ioi", "--n-prompts", "2", "--n-graphs", "3"], "--n-graphs 3 is more than --n-prompts 2")
    half = tmp_path / "four.csv"  # a 4-row file: 2 discovery prompts, fewer than --n-graphs 3
    pd.read_csv(ROOT / "tasks" / "examples" / "ioi_pairs.csv").head(4).to_csv(half, index=False)
    refused_with(["--tasks", str(half), "--n-prompts", "8", "--n-graphs", "3"], "has 2 discovery prompts")
    assert not any((tmp_path / "o").rglob("*.csv"))
