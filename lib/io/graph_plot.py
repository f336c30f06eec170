"""A pruned attribution graph drawn as a static PNG and as Graphviz DOT: layers on the y axis (token embeddings at
the bottom, logits at the top), prompt positions on the x axis, features labelled with the tokens their decoder
promotes most, error nodes as grey squares, edges coloured by sign with width by |weight|. Input: the frontend
model (lib.io.graph_json.frontend), so the picture shows exactly the nodes and links of the JSON."""

from __future__ import annotations

from lib.io.diagram import NEGATIVE, POSITIVE, _colour, _width, plt

FEATURE, LOGIT = "#e6a23c", "#2a9d4b"


def _layer_row(node: dict, n_layers: int) -> float:
    if node["layer"] == "E":
        return -1.0
    return float(node["layer"]) if node["feature_type"] != "logit" else float(n_layers)


def _positions(nodes: list[dict], n_layers: int, rows: dict[float, int]) -> dict:
    """node_id -> (x, y): nodes of one (layer, position) cell spread across the cell's width; y is the row index
    of the node's layer among the layers drawn (rows)."""
    cells: dict = {}
    top = rows[float(n_layers)]  # the logits' row
    for n in nodes:
        cells.setdefault((n["ctx_idx"], rows[_layer_row(n, n_layers)]), []).append(n)
    where = {}
    for (pos, row), members in cells.items():
        members.sort(key=lambda n: -(n.get("activation") or n.get("token_prob") or 0))
        logits = row == top
        span = min(0.6 * len(members), pos + 0.4) if logits else 0.8  # the logits spread leftwards along the top
        for k, n in enumerate(members):
            if len(members) == 1:
                where[n["node_id"]] = (pos, row)
            else:
                step = span / (len(members) - 1)
                where[n["node_id"]] = (pos - span + k * step if logits else pos - span / 2 + k * step, row)
    return where


def figure(model: dict, n_layers: int, labels: dict, title: str):
    """labels: node_id -> text under a feature node (its promoted tokens). Rows: the token embeddings, each layer
    that has a node, the logits (empty layers are left out and said); the whole prompt wrapped under the title."""
    import textwrap

    from matplotlib.lines import Line2D

    nodes, links = model["nodes"], model["links"]
    tokens = model["metadata"]["prompt_tokens"]
    layers = sorted({_layer_row(n, n_layers) for n in nodes} | {-1.0, float(n_layers)})
    rows = {layer: i for i, layer in enumerate(layers)}
    where = _positions(nodes, n_layers, rows)
    width = min(max(6.5, 0.75 * len(tokens) + 3.5), 16.0)
    fig, ax = plt.subplots(figsize=(width, 0.75 * len(layers) + 2.6), layout="constrained")
    top = max((abs(l["weight"]) for l in links), default=1.0) or 1.0
    for l in sorted(links, key=lambda l: abs(l["weight"])):
        (x0, y0), (x1, y1) = where[l["source"]], where[l["target"]]
        ax.annotate(
            "",
            (x1, y1),
            (x0, y0),
            zorder=1,
            arrowprops=dict(
                arrowstyle="-|>",
                lw=_width(l["weight"], top) * 0.6,
                color=_colour(l["weight"]),
                alpha=0.45,
                shrinkA=4,
                shrinkB=4,
                mutation_scale=6,
            ),
        )
    staggered: dict = {}
    for n in sorted(nodes, key=lambda n: where[n["node_id"]]):
        x, y = where[n["node_id"]]
        kind = n["feature_type"]
        if kind == "mlp reconstruction error":
            ax.scatter([x], [y], s=70, marker="s", color="0.6", zorder=2)
        elif kind == "embedding":
            ax.scatter([x], [y], s=60, marker="D", color="0.25", zorder=2)
        elif kind == "logit":
            ax.scatter([x], [y], s=80, marker="^", color=LOGIT, zorder=2)
            ax.annotate(
                n["clerp"].removeprefix("Output "),
                (x, y),
                xytext=(0, 8),
                textcoords="offset points",
                ha="center",
                fontsize=7,
            )
        else:
            ax.scatter([x], [y], s=65, marker="o", color=FEATURE, edgecolor="0.3", lw=0.4, zorder=2)
            text = f"f{n['node_id'].split('_')[1]}" + (f"\n{labels[n['node_id']]}" if labels.get(n["node_id"]) else "")
            below = 8 + 16 * (staggered.setdefault((n["ctx_idx"], y), 0) % 2)  # neighbours' labels alternate
            staggered[n["ctx_idx"], y] += 1
            ax.annotate(
                text, (x, y), xytext=(0, -below), textcoords="offset points", ha="center", va="top", fontsize=6.5
            )
    many = len(tokens) > 12
    ax.set_xticks(
        range(len(tokens)),
        [repr(t[:12] if many else t)[1:-1] for t in tokens],
        fontsize=8,
        rotation=45 if many else 0,
        ha="right" if many else "center",
        rotation_mode="anchor",
    )
    names = {-1.0: "tokens", float(n_layers): "logits"}
    ax.set_yticks(range(len(layers)), [names.get(l, f"layer {int(l)}") for l in layers], fontsize=8)
    xs = [x for x, _ in where.values()]
    ax.set_xlim(min(-0.8, min(xs) - 0.4), max(len(tokens) - 0.2, max(xs) + 0.6))
    ax.set_ylim(-0.7, len(layers) - 0.2)
    ax.grid(axis="y", color="0.92", zorder=0)
    n_feat = sum(n["feature_type"] == "cross layer transcoder" for n in nodes)
    n_err = sum(n["feature_type"] == "mlp reconstruction error" for n in nodes)
    empty = n_layers - (len(layers) - 2)
    prompt = textwrap.fill(repr(model["metadata"]["prompt"]), width=int(width * 11))
    ax.set_title(f"{title}\n{prompt}", fontsize=9)
    handles = [
        Line2D([], [], marker="o", ls="", color=FEATURE, markeredgecolor="0.3", label="transcoder feature"),
        Line2D([], [], marker="s", ls="", color="0.6", label="error node"),
        Line2D([], [], marker="D", ls="", color="0.25", label="token embedding"),
        Line2D([], [], marker="^", ls="", color=LOGIT, label="logit"),
        Line2D([], [], color=POSITIVE, label="edge weight > 0 (raises the target)"),
        Line2D([], [], color=NEGATIVE, label="edge weight < 0 (lowers it)"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    fig.supxlabel(
        f"{n_feat} features, {n_err} error nodes, {len(links)} edges (width: |weight|)"
        + (f"; {empty} layer{'s' if empty != 1 else ''} without nodes not drawn" if empty else ""),
        fontsize=7,
        color="0.35",
    )
    return fig


def dot(model: dict, n_layers: int, labels: dict, title: str) -> str:
    """The same nodes and links as DOT: one rank per layer, bottom to top."""
    lines = ["digraph attribution_graph {", f'  label="{title}"; labelloc=t; rankdir=BT; newrank=true;']
    by_row: dict = {}
    for n in model["nodes"]:
        by_row.setdefault(_layer_row(n, n_layers), []).append(n)
        kind = n["feature_type"]
        shape = {"mlp reconstruction error": "box", "embedding": "diamond", "logit": "triangle"}.get(kind, "ellipse")
        text = n["clerp"] or n["node_id"]
        if labels.get(n["node_id"]):
            text += f"\\n{labels[n['node_id']]}"
        colour = "#999999" if kind == "mlp reconstruction error" else "#333333"
        lines.append(f'  "{n["node_id"]}" [shape={shape}, color="{colour}", label="{_escape(text)}"];')
    for row in sorted(by_row):
        lines.append("  { rank=same; " + " ".join(f'"{n["node_id"]}";' for n in by_row[row]) + " }")
    top = max((abs(l["weight"]) for l in model["links"]), default=1.0) or 1.0
    for l in model["links"]:
        lines.append(
            f'  "{l["source"]}" -> "{l["target"]}" [color="{POSITIVE if l["weight"] >= 0 else NEGATIVE}", '
            f'penwidth={_width(l["weight"], top):.2f}, tooltip="weight {l["weight"]:.6g}"];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\\\\n", "\\n")
