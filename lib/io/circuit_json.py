"""Circuit files: ours (DEFINITIONS.md, The graph) and the EAP-IG library's graph JSON (the format of MIB submissions), read
without torch (a bad file is refused before any heavy import) and checked against a graph once one exists.

Score conventions. Our EAP scores estimate m(ablated) - m(clean): an edge the task needs scores negative. The
EAP-IG library and MIB attribute the loss -m, so their scores are the negatives of ours, and MIB's signed
ranking takes the largest score first. EAP-IG files are therefore written with importance = -our score (ACDC:
its worsening, already of that sign) and read back negated, so a round trip keeps our scores."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lib.core.errors import UserError

EAP_IG_CONVENTION = (
    "higher = more important (the EAP-IG library's and MIB's convention: attribution of the "
    "loss -metric); this suite's EAP scores are the negatives"
)


def _no_duplicate_keys(path):
    def hook(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            twice = next(k for k in keys if keys.count(k) > 1)
            raise UserError(f"circuit file {path}: key {twice!r} appears twice in one object")
        return dict(pairs)

    return hook


def read_json(path: Path, what: str = "circuit file"):
    """A JSON file (a UTF-8 byte-order mark is allowed), every problem one UserError line."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"), object_pairs_hook=_no_duplicate_keys(path))
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a directory") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text") from None
    except (OSError, json.JSONDecodeError, ValueError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({' '.join(str(e).split())})") from None


def _score(path, name, score) -> float:
    if score is None:
        return float("nan")
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise UserError(f"circuit file {path}: edge {name}'s score {score!r} is not a number")
    return float(score)


@dataclass
class Circuit:
    """A set of edges with provenance; saved as JSON (DEFINITIONS.md, The graph). Scores are in our convention."""

    model: str
    task: str
    method: str
    params: dict
    edges: dict[str, float]  # edge name -> score (nan where the method gives none)

    def mask(self, graph):
        return graph.mask_of(self.edges)

    def to_json(self, graph) -> dict:
        mask = self.mask(graph)
        return {
            "model": self.model,
            "task": self.task,
            "method": self.method,
            "params": self.params,
            "nodes": graph.nodes_of(mask),
            "edges": [{"edge": e, "score": self.edges[e]} for e in graph.edges_of(mask)],
        }

    def save(self, path: Path, graph) -> None:
        Path(path).write_text(json.dumps(self.to_json(graph), indent=1) + "\n")

    @classmethod
    def read(cls, path: Path) -> Circuit:
        """Read a circuit JSON and check its form (before any model is loaded); every problem is one
        UserError line. Edge names are checked against a graph by load()."""
        obj = read_json(path)
        if isinstance(obj, dict) and isinstance(obj.get("edges"), dict) and "cfg" in obj:
            return cls.from_eap_ig(obj, path)
        if not isinstance(obj, dict) or not isinstance(obj.get("edges"), list):
            raise UserError(f"circuit file {path} has no 'edges' list")
        edges = {}
        for item in obj["edges"]:
            name = item.get("edge") if isinstance(item, dict) else item
            if not isinstance(name, str) or "->" not in name:
                raise UserError(
                    f"circuit file {path}: each edge must be a name 'source->receiver' or {{'edge': name, 'score': x}}"
                )
            if name in edges:
                raise UserError(f"circuit file {path}: edge {name} is listed twice")
            edges[name] = _score(path, name, item.get("score") if isinstance(item, dict) else None)
        if not edges:
            raise UserError(f"circuit file {path} has no edges")
        params = obj.get("params", {})
        return cls(
            str(obj.get("model", "?")),
            str(obj.get("task", "?")),
            str(obj.get("method", "?")),
            params if isinstance(params, dict) else {},
            edges,
        )

    @classmethod
    def from_eap_ig(cls, obj: dict, path) -> Circuit:
        """A circuit in the EAP-IG library's graph JSON: {"cfg": {n_layers, n_heads, parallel_attn_mlp, ...},
        "nodes": {name: {"in_graph"}}, "edges": {name: {"score", "in_graph"}}}; the circuit is the edges with
        in_graph true (a JSON boolean), their scores negated into our convention (module docstring)."""
        cfg = obj["cfg"]
        if not isinstance(cfg, dict) or not all(type(cfg.get(k)) is int for k in ("n_layers", "n_heads")):
            raise UserError(f"circuit file {path}: EAP-IG graph JSON without integer cfg.n_layers and cfg.n_heads")
        edges = {}
        for name, info in obj["edges"].items():
            if not isinstance(info, dict) or "in_graph" not in info or "->" not in str(name):
                raise UserError(f"circuit file {path}: EAP-IG edge {name!r} needs {{'score', 'in_graph'}}")
            if not isinstance(info["in_graph"], bool):
                raise UserError(
                    f"circuit file {path}: edge {name}'s in_graph is {info['in_graph']!r}; it must be "
                    "true or false (a JSON boolean)"
                )
            if info["in_graph"]:
                edges[name] = -_score(path, name, info.get("score"))
        if not edges:
            raise UserError(f"circuit file {path} has no edges in the graph (in_graph)")
        model = cfg.get("model_name") or cfg.get("model") or "?"
        return cls(str(model), "?", "eap-ig-json", {"format": "eap-ig", "cfg": cfg}, edges)

    @classmethod
    def load(cls, path: Path, graph, model_name: str | None = None) -> Circuit:
        """read() and check every edge against graph, and the file's model (where it names one) against the
        loaded model's name: a circuit of another model is refused, not silently applied."""
        from lib.core.graph import Graph

        circuit = cls.read(path)
        cfg = circuit.params.get("cfg") if circuit.params.get("format") == "eap-ig" else None
        if cfg and (cfg["n_layers"], cfg["n_heads"], bool(cfg.get("parallel_attn_mlp"))) != (
            graph.n_layers,
            graph.n_heads,
            graph.parallel,
        ):
            other = Graph(cfg["n_layers"], cfg["n_heads"], bool(cfg.get("parallel_attn_mlp")))
            raise UserError(
                f"circuit file {path}: an EAP-IG graph of a {other.describe()} model, not of this "
                f"{graph.describe()} one"
            )
        if model_name is not None and circuit.model not in ("?", model_name):
            raise UserError(
                f"circuit file {path} was made for model {circuit.model!r}, not {model_name!r}; if it "
                f'applies to this model, set its "model" field to {model_name!r}'
            )
        for name in circuit.edges:
            try:
                graph.edge_index(name)
            except UserError as e:
                raise UserError(f"circuit file {path}: {e}") from None
        return circuit


def eap_ig_json(graph, keep, importance, d_model: int | None, model_name: str | None = None) -> dict:
    """Every edge of the graph in the EAP-IG library's graph JSON, with in_graph from keep [S, R] bool and score
    = importance [S, R] (larger = more important: -our EAP score, ACDC's worsening); the one writer of --export
    eap-ig, so 05's and 06's files share the convention."""
    on_nodes = set(graph.nodes_of(keep))
    edges = {}
    for e in graph.edge_names:
        s, r = graph.edge_index(e)
        score = float(importance[s, r])
        edges[e] = {"score": score if score == score else 0.0, "in_graph": bool(keep[s, r])}
    return {
        "cfg": {
            "n_layers": graph.n_layers,
            "n_heads": graph.n_heads,
            "parallel_attn_mlp": graph.parallel,
            "d_model": d_model,
            "model_name": model_name,
            "score_convention": EAP_IG_CONVENTION,
        },
        "nodes": {n: {"in_graph": n in on_nodes} for n in graph.nodes},
        "edges": edges,
    }
