"""Attribution graphs in circuit-tracer's frontend JSON (circuit_tracer/frontend/graph_models.py and
utils/create_graph_files.py), the files its local server and the Neuronpedia graph viewer read: {metadata,
qParams, nodes, links}, nodes of the pruned graph with circuit-tracer's ids (features `{layer}_{feature}_{pos}`,
tokens `E_{token id}_{pos}`, logits `{L+1}_{token id}_{pos}`), each node's
`influence` its cumulative influence share, links {source, target, weight} for the pruned edges, and
graph-metadata.json listing the graphs of a folder. Plain JSON, no torch.

One departure, on purpose: an error node's id is `{layer}_-1_{pos}` (jsNodeId `{layer}_-1-{pos}`), where
circuit-tracer writes `0_{layer}_{pos}` (jsNodeId `{layer}_{pos}-0`). Theirs collides with a layer-0 feature
whose index equals the layer (node_id), and with a feature of the same layer whose index equals the position
(jsNodeId); feature -1 names no feature, so ours cannot. Everything else, text fields included (raw newlines in
`prompt_tokens` and `prompt`; `process_token`'s arrows only in a logit's clerp), is written as theirs is."""

from __future__ import annotations

QPARAMS = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}


def process_token(token: str) -> str:
    """circuit-tracer's frontend/utils.py process_token."""
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def _node(node_id, feature, layer, pos, kind, js, influence=None, activation=None, **extra) -> dict:
    return {
        "node_id": node_id,
        "feature": int(feature),
        "layer": str(layer),
        "ctx_idx": int(pos),
        "feature_type": kind,
        "token_prob": 0.0,
        "is_target_logit": False,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": js,
        "clerp": "",
        "influence": influence,
        "activation": activation,
        **extra,
    }


def cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def node_ids(graph) -> list[str]:
    """Every node's circuit-tracer id, in the graph's node order."""
    ids = []
    for j in graph.selected.tolist():
        layer, pos, feat = graph.active[j].tolist()
        ids.append(f"{layer}_{feat}_{pos}")
    ids += [f"{l}_-1_{p}" for l in range(graph.n_layers) for p in range(graph.n_pos)]
    ids += [f"E_{int(t)}_{p}" for p, t in enumerate(graph.tokens.tolist())]
    ids += [f"{graph.n_layers + 1}_{int(t)}_{graph.n_pos - 1}" for t in graph.logit_tokens.tolist()]
    return ids


def frontend(graph, pruned, decode, slug: str, scan: str, node_threshold: float, prompt: str) -> dict:
    """The frontend model of a graph (lib.features.attribution) and its pruning (lib.features.influence.prune);
    decode(token id) -> text; prompt: the prompt's text as typed (without BOS), like circuit-tracer's
    graph.input_string."""
    s = graph.slices()
    ids = node_ids(graph)
    cumulative = pruned.cumulative.tolist()
    nodes = {}
    for i in pruned.node_mask.nonzero().flatten().tolist():
        if i < s["feature"].stop:
            j = int(graph.selected[i])
            layer, pos, feat = graph.active[j].tolist()
            nodes[i] = _node(
                ids[i],
                cantor(layer, feat),
                layer,
                pos,
                "cross layer transcoder",
                f"{layer}_{feat}-0",
                cumulative[i],
                float(graph.activations[j]),
            )
        elif i < s["error"].stop:
            layer, pos = divmod(i - s["error"].start, graph.n_pos)
            nodes[i] = _node(ids[i], -1, layer, pos, "mlp reconstruction error", f"{layer}_-1-{pos}", cumulative[i])
        elif i < s["token"].stop:
            pos = i - s["token"].start
            vocab = int(graph.tokens[pos])
            nodes[i] = _node(ids[i], pos, "E", pos, "embedding", f"E_{vocab}-{pos}", cumulative[i])
        else:
            k = i - s["logit"].start
            vocab, prob = int(graph.logit_tokens[k]), float(graph.logit_probs[k])
            nodes[i] = _node(
                ids[i],
                vocab,
                graph.n_layers + 1,
                graph.n_pos - 1,
                "logit",
                f"L_{vocab}-{graph.n_pos - 1}",
                token_prob=prob,
                is_target_logit=k == 0,
                clerp=f'Output "{process_token(decode(vocab))}" (p={prob:.3f})',
            )
    targets, sources = pruned.edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency[targets, sources].tolist()
    links = [
        {"source": nodes[src]["node_id"], "target": nodes[dst]["node_id"], "weight": w}
        for dst, src, w in zip(targets.tolist(), sources.tolist(), weights)
        if src in nodes and dst in nodes
    ]
    used = {l["source"] for l in links} | {l["target"] for l in links}
    kept = [n for n in nodes.values() if n["node_id"] in used or n["feature_type"] in ("embedding", "logit")]
    metadata = {
        "slug": slug,
        "scan": scan,
        "transcoder_list": [],
        "prompt_tokens": [decode(int(t)) for t in graph.tokens.tolist()],  # raw, as create_graph_files writes them
        "prompt": prompt,
        "node_threshold": float(node_threshold),
        "schema_version": 1,
    }
    return {"metadata": metadata, "qParams": dict(QPARAMS), "nodes": kept, "links": links}


def metadata_index(metadata: list[dict]) -> dict:
    """graph-metadata.json of a folder of graphs (circuit-tracer's add_graph_metadata: one entry per slug, the
    last one written for a slug)."""
    return {"graphs": list({m["slug"]: m for m in metadata}.values())}
