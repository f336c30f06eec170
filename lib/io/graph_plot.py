"""A pruned attribution graph drawn as a static PNG and as Graphviz DOT: layers on the y axis (token embeddings at
the bottom, logits at the top), prompt positions on the x axis, features labelled with the tokens their decoder
promotes most, error nodes as grey squares, edges coloured by sign with width by |weight|. Input: the frontend
model (lib.io.graph_json.frontend), so the picture shows exactly the nodes and links of the JSON."""

from __future__ import annotations

from lib.io.diagram import NEGATIVE, POSITIVE, _colour, _width, plt


def _layer_row(node: dict, n_layers: int) -> float:
    if node["layer"] == "E":
        return -1.0
    return float(node["layer"]) if node["feature_type"] != "logit" else float(n_layers)


def _positions(nodes: list[dict], n_layers: int) -> dict:
    """node_id -> (x, y): nodes of one (layer, position) cell spread across the cell's width."""
    cells: dict = {}
    for n in nodes:
        cells.setdefault((n["ctx_idx"], _layer_row(n, n_layers)), []).append(n)
    where = {}
    for (pos, row), members in cells.items():
        members.sort(key=lambda n: -(n.get("activation") or n.get("token_prob") or 0))
        logits = row == float(n_layers)
        span = min(0.6 * len(members), pos + 0.4) if logits else 0.8  # the logits spread leftwards along the top
        for k, n in enumerate(members):
            if len(members) == 1:
                where[n["node_id"]] = (pos, row)
            else:
                step = span / (len(members) - 1)
                where[n["node_id"]] = (pos - span + k * step if logits else pos - span / 2 + k * step, row)
    return where


def figure(model: dict, n_layers: int, labels: dict, title: str):
    """labels: node_id -> text under a feature node (its promoted tokens)."""
    nodes, links = model["nodes"], model["links"]
    tokens = model["metadata"]["prompt_tokens"]
    where = _positions(nodes, n_layers)
    fig, ax = plt.subplots(
        figsize=(min(max(6.0, 0.62 * len(tokens) + 2), 20), 0.9 * (n_layers + 2) + 1.8), layout="constrained"
    )
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
            ax.scatter([x], [y], s=60, marker="s", color="0.6", zorder=2)
        elif kind == "embedding":
            ax.scatter([x], [y], s=50, marker="D", color="0.25", zorder=2)
        elif kind == "logit":
            ax.scatter([x], [y], s=70, marker="^", color="#2a9d4b", zorder=2)
            ax.annotate(
                n["clerp"].removeprefix("Output "),
                (x, y),
                xytext=(0, 7),
                textcoords="offset points",
                ha="left",
                fontsize=6,
                rotation=35,
                rotation_mode="anchor",
            )
        else:
            ax.scatter([x], [y], s=55, marker="o", color="#e6a23c", edgecolor="0.3", lw=0.4, zorder=2)
            text = f"f{n['node_id'].split('_')[1]}" + (f"\n{labels[n['node_id']]}" if labels.get(n["node_id"]) else "")
            below = 7 + 14 * (staggered.setdefault((n["ctx_idx"], y), 0) % 2)  # neighbours' labels alternate
            staggered[n["ctx_idx"], y] += 1
            ax.annotate(
                text, (x, y), xytext=(0, -below), textcoords="offset points", ha="center", va="top", fontsize=4.8
            )
    ax.set_xticks(
        range(len(tokens)),
        [f"{i} {t[:10]!r}" for i, t in enumerate(tokens)],
        fontsize=6,
        rotation=60,
        ha="right",
        rotation_mode="anchor",
    )
    ax.set_yticks(
        [-1, *range(n_layers), n_layers], ["tokens", *(f"layer {l}" for l in range(n_layers)), "logits"], fontsize=7
    )
    xs = [x for x, _ in where.values()]
    ax.set_xlim(min(-0.8, min(xs) - 0.4), max(len(tokens) - 0.2, max(xs) + 0.6))
    ax.set_ylim(-1.7, n_layers + 1.2)
    ax.grid(axis="y", color="0.92", zorder=0)
    n_feat = sum(n["feature_type"] == "cross layer transcoder" for n in nodes)
    n_err = sum(n["feature_type"] == "mlp reconstruction error" for n in nodes)
    ax.set_title(
        f"{title}\n{n_feat} features, {n_err} error nodes, {len(links)} edges (blue > 0, red < 0; width |weight|)",
        fontsize=9,
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
