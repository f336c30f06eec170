"""Circuit diagrams: nodes on a layer x head grid (MLPs in their own column), edge colour by the sign of the
score and width by |score|; as a PNG (matplotlib) and as Graphviz DOT text (no system package needed)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402

POSITIVE, NEGATIVE, UNSCORED = "#1f63b4", "#c8372d", "#777777"
STYLES = {"q": "-", "k": "--", "v": ":", "": "-"}  # line style by the receiving input of a head
MIN_WIDTH, MAX_WIDTH = 0.6, 4.5

Edge = tuple[str, str, float]  # (source node, receiver name, score)


def node_of(receiver: str) -> tuple[str, str]:
    """'a3.h1<q>' -> ('a3.h1', 'q'); 'm2' -> ('m2', '')."""
    if receiver.endswith(">"):
        node, kind = receiver[:-1].split("<")
        return node, kind
    return receiver, ""


def grid_position(node: str, n_layers: int, n_heads: int) -> tuple[float, float]:
    """x = head index (MLPs in a column after the heads), y = layer (input below, logits above)."""
    if node == "input":
        return ((n_heads - 1) / 2, -1.0)
    if node == "logits":
        return ((n_heads - 1) / 2, float(n_layers))
    if node.startswith("m"):
        return (n_heads + 0.5, float(node[1:]))
    layer, head = node[1:].split(".h")
    return (float(head), float(layer))


def _width(score: float, top: float) -> float:
    return MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * abs(score) / top if np.isfinite(score) else MIN_WIDTH


def _colour(score: float) -> str:
    return UNSCORED if not np.isfinite(score) else POSITIVE if score >= 0 else NEGATIVE


def _top(edges: list[Edge]) -> float:
    return max((abs(s) for _, _, s in edges if np.isfinite(s)), default=1.0) or 1.0


def circuit_figure(edges: list[Edge], n_layers: int, n_heads: int, title: str, score_name: str = "score"):
    """The circuit on the layer x head grid, with a legend for colour (sign), width (|score|) and style (q/k/v)."""
    fig, ax = plt.subplots(figsize=(0.75 * (n_heads + 2) + 3.2, 0.6 * (n_layers + 2) + 1.2), layout="constrained")
    xs, ys = np.meshgrid(np.arange(n_heads), np.arange(n_layers))
    ax.scatter(xs.ravel(), ys.ravel(), s=14, color="0.85", zorder=1)  # every head: the grid itself
    ax.scatter(np.full(n_layers, n_heads + 0.5), np.arange(n_layers), s=14, color="0.85", marker="s", zorder=1)
    top, used = _top(edges), set()
    for src, rcv, score in edges:
        dst, kind = node_of(rcv)
        used |= {src, dst}
        p0, p1 = grid_position(src, n_layers, n_heads), grid_position(dst, n_layers, n_heads)
        ax.add_patch(
            FancyArrowPatch(
                p0,
                p1,
                connectionstyle="arc3,rad=0.12",
                arrowstyle="-|>",
                mutation_scale=7,
                lw=_width(score, top),
                ls=STYLES[kind],
                color=_colour(score),
                alpha=0.7,
                shrinkA=5,
                shrinkB=5,
                zorder=2,
            )
        )
    for node in used:
        x, y = grid_position(node, n_layers, n_heads)
        marker = "s" if node.startswith("m") else "D" if node in ("input", "logits") else "o"
        ax.scatter([x], [y], s=70, color="white", edgecolor="k", marker=marker, zorder=3)
        if node == "input":  # below its marker: every edge leaves it upwards
            ax.annotate(node, (x, y), xytext=(0, -8), textcoords="offset points", ha="center", va="top", fontsize=8)
        elif node == "logits":  # above: every edge enters it from below
            ax.annotate(node, (x, y), xytext=(0, 8), textcoords="offset points", ha="center", va="bottom", fontsize=8)
        else:  # every node named, on a white ground above the edges
            ax.annotate(
                node,
                (x, y),
                xytext=(0, -7),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=5.5,
                zorder=4,
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.85),
            )
    ax.set_xticks(list(range(n_heads)) + [n_heads + 0.5], [str(h) for h in range(n_heads)] + ["MLP"])
    ax.set_yticks(range(n_layers))
    ax.set_xlim(-0.8, n_heads + 1.3)
    ax.set_ylim(-1.9, n_layers + 0.9)
    ax.set_xlabel("head (MLP of the layer in its own column)")
    ax.set_ylabel("layer")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    handles = [
        Line2D([], [], color=POSITIVE, lw=2.5, label=f"{score_name} > 0"),
        Line2D([], [], color=NEGATIVE, lw=2.5, label=f"{score_name} < 0"),
        Line2D([], [], color="k", lw=MAX_WIDTH, label=f"|{score_name}| = {top:.3g}"),
        Line2D([], [], color="k", lw=_width(top / 2, top), label=f"|{score_name}| = {top / 2:.3g}"),
        Line2D([], [], color="k", lw=1.5, ls="-", label="into q (or MLP, logits)"),
        Line2D([], [], color="k", lw=1.5, ls="--", label="into k"),
        Line2D([], [], color="k", lw=1.5, ls=":", label="into v"),
    ]
    if any(not np.isfinite(s) for _, _, s in edges):
        handles.insert(2, Line2D([], [], color=UNSCORED, lw=2.5, label="no score"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    ax.set_title(title, fontsize=10)
    return fig


def circuit_dot(edges: list[Edge], n_layers: int, n_heads: int, title: str, score_name: str = "score") -> str:
    """The same circuit as Graphviz DOT text: one rank per layer, inputs at the bottom, logits on top."""
    top = _top(edges)
    nodes = {"input", "logits"} | {s for s, _, _ in edges} | {node_of(r)[0] for _, r, _ in edges}
    lines = [
        "digraph circuit {",
        f'  label="{title}"; labelloc=t; rankdir=BT; newrank=true;',
        "  node [shape=circle, fontsize=10, width=0.5, fixedsize=true];",
        "  input [shape=box]; logits [shape=box];",
    ]
    for layer in range(n_layers):
        members = [n for n in [f"a{layer}.h{h}" for h in range(n_heads)] + [f"m{layer}"] if n in nodes]
        if members:
            lines.append(
                "  { rank=same; " + " ".join(f'"{n}"{" [shape=box]" if n[0] == "m" else ""};' for n in members) + " }"
            )
    for src, rcv, score in edges:
        dst, kind = node_of(rcv)
        style = {"q": "solid", "k": "dashed", "v": "dotted", "": "solid"}[kind]
        label = f', label="{kind}"' if kind else ""
        value = f"{score:.6g}" if np.isfinite(score) else "none"
        lines.append(
            f'  "{src}" -> "{dst}" [color="{_colour(score)}", penwidth={_width(score, top):.2f}, '
            f'style={style}{label}, tooltip="{score_name} {value}"];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def site_row(site: str) -> float:
    """Vertical order of a feature site: embed at the bottom, then per layer attention, MLP (or transcoder),
    residual stream."""
    if site == "embed":
        return 0.0
    kind, layer = site.rstrip("0123456789"), int(site[len(site.rstrip("0123456789")) :])
    return 1 + 3 * layer + {"attn": 0, "mlp": 1, "tc": 1, "resid": 2}.get(kind, 2)


FEATURE_NODES_DRAWN, FEATURE_EDGES_DRAWN = 30, 40  # what a reader takes in; the rest is counted in the caption


def feature_figure(
    nodes: list[dict],
    title: str,
    edges: Sequence[dict] = (),
    max_nodes: int = FEATURE_NODES_DRAWN,
    max_edges: int = FEATURE_EDGES_DRAWN,
):
    """A feature circuit's strongest nodes (max_nodes by |effect|) by site, forward order upwards, and the
    strongest edges among them (max_edges by |effect|); size and width by |effect|, colour by what the node does
    to the task, error nodes as grey squares, features labelled with the token they promote most. The caption
    counts what is not drawn (the DOT file and circuit JSON hold every node and edge)."""
    shown = sorted(nodes, key=lambda n: -abs(n["effect"]))[:max_nodes]
    names = {n["node"] for n in shown}
    between = [e for e in edges if e["upstream"] in names and e["downstream"] in names]
    drawn_edges = sorted(between, key=lambda e: -abs(e["effect"]))[:max_edges]
    by_row: dict[float, list[dict]] = {}
    for n in shown:
        by_row.setdefault(site_row(n["site"]), []).append(n)
    rows = sorted(by_row)
    y_of = {row: i for i, row in enumerate(rows)}  # only the sites that have a drawn node get a row
    width = max((len(r) for r in by_row.values()), default=1)
    where = {n["node"]: (x - (len(r) - 1) / 2, y_of[row]) for row, r in by_row.items() for x, n in enumerate(r)}
    fig, ax = plt.subplots(figsize=(min(4.5 + 1.0 * width, 11), min(0.6 * len(rows) + 2.2, 8.5)), layout="constrained")
    top = max((abs(n["effect"]) for n in shown), default=1.0) or 1.0
    top_edge = max((abs(e["effect"]) for e in drawn_edges), default=1.0) or 1.0
    for e in drawn_edges:  # under the nodes
        ax.annotate(
            "",
            where[e["downstream"]],
            where[e["upstream"]],
            zorder=1,
            arrowprops=dict(
                arrowstyle="-|>",
                lw=_width(e["effect"], top_edge),
                color=_colour(e["effect"]),
                alpha=0.55,
                shrinkA=7,
                shrinkB=7,
            ),
        )
    for n in shown:
        x, y = where[n["node"]]
        error = n["feature"] < 0
        ax.scatter(
            [x],
            [y],
            s=50 + 450 * abs(n["effect"]) / top,
            marker="s" if error else "o",
            color="0.6" if error else _colour(n["effect"]),
            alpha=0.85,
            zorder=2,
        )
        label = n["node"].split("/", 1)[-1] + (f"\n{n['promotes']}" if n.get("promotes") else "")
        ax.annotate(label, (x, y), xytext=(0, -11), textcoords="offset points", ha="center", va="top", fontsize=7)
    ax.set_yticks(range(len(rows)), [by_row[row][0]["site"] for row in rows], fontsize=8)
    ax.set_xticks([])
    ax.set_xlim(-width / 2 - 0.3, width / 2 - 0.2)
    ax.set_ylim(-0.8, len(rows) - 0.4)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    handles = [
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            color=NEGATIVE,
            label="effect < 0: the node supports the task\n(patching it lowers the metric)",
        ),
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            color=POSITIVE,
            label="effect > 0: the node works against it\n(patching it raises the metric)",
        ),
        Line2D([], [], marker="s", ls="", color="0.6", label="error node (what the dictionary misses)"),
        Line2D(
            [], [], color="0.3", label="edge: effect of the upstream node\nthrough the downstream one (same colours)"
        ),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False, labelspacing=1.0)
    ax.set_title(title, fontsize=10)
    fig.supxlabel(
        f"The {len(shown)} strongest of {len(nodes):,} nodes and the {len(drawn_edges)} strongest of {len(edges):,} "
        "edges (size and width: |effect|); every node and edge is in the circuit's JSON and DOT files.",
        fontsize=7,
        color="0.35",
    )
    return fig


def feature_dot(nodes: list[dict], title: str, edges: Sequence[dict] = ()) -> str:
    """The same nodes as Graphviz DOT: one rank per site, features as ellipses, error nodes as grey boxes."""
    top = max((abs(n["effect"]) for n in nodes), default=1.0) or 1.0
    lines = ["digraph feature_circuit {", f'  label="{title}"; labelloc=t; rankdir=BT; newrank=true;']
    by_site: dict[str, list[dict]] = {}
    for n in nodes:
        by_site.setdefault(n["site"], []).append(n)
    for site in sorted(by_site, key=site_row):
        members = []
        for n in by_site[site]:
            error = n["feature"] < 0
            colour = "#999999" if error else (POSITIVE if n["effect"] >= 0 else NEGATIVE)
            label = n["node"] + (f"\\n{n['promotes']}" if n.get("promotes") else "")
            lines.append(
                f'  "{n["node"]}" [shape={"box" if error else "ellipse"}, color="{colour}", '
                f"penwidth={MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * abs(n['effect']) / top:.2f}, "
                f'label="{label}", tooltip="effect {n["effect"]:.6g}"];'
            )
            members.append(f'"{n["node"]}";')
        lines.append("  { rank=same; " + " ".join(members) + " }")
    top_edge = max((abs(e["effect"]) for e in edges), default=1.0) or 1.0
    for e in edges:
        lines.append(
            f'  "{e["upstream"]}" -> "{e["downstream"]}" [color="{_colour(e["effect"])}", '
            f'penwidth={_width(e["effect"], top_edge):.2f}, tooltip="effect {e["effect"]:.6g}"];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"
