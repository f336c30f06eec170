"""Causal scrubbing (Chan et al. 2022; DEFINITIONS.md, Patching an edge) with batched forward passes.

A hypothesis is a circuit (kept edges) plus, per node, the features of the input its output depends on
(and optionally the one position where that claim is made). On the treeified graph, node n evaluated on
prompt j (an *instance* (n, j)) reads, at each of its receivers r:
  - over a circuit edge u->r: u's instance on a prompt drawn to agree with j on u's features (at u's
    claimed position; at other positions u counts as outside the circuit);
  - over every other edge: u's output in the plain model on one random other prompt drawn for (r, j),
    shared by all of r's non-circuit edges;
recursively down to the input. Draws are tabled per (node, prompt) and per (receiver, prompt), so tree copies
of a node on the same prompt share their draws (exact per-path draws grow exponentially with depth). Every
draw keeps the prompt's structure (task.aligned_by and token length) so activations align by position.

Per chunk of evaluation prompts: the instances reachable from the logits are collected (the closure), one
plain forward pass over the randomly drawn prompts gives every instance receiver its non-circuit part
    base[r, j] = input_r(plain, k) - sum_{u->r in circuit} mask_u * out_u(plain, k),   k = random draw
and one forward pass over every prompt holding an instance, with receivers patched from other rows of the
same pass (edges only go forward in layers), evaluates the whole tree:
    input_r(j) = base[r, j] + sum_{u->r in circuit} mask_u * out_u(instance row of u's draw for j).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from lib.core.forward import stop_before_unembedding, unembed_at
from lib.core.graph import Graph
from lib.core.patching import receiver_columns, source_hooks
from tasks.base import TaskData

WHOLE_PROMPT = ("prompt",)


@dataclass(frozen=True)
class Hypothesis:
    """A circuit plus per-node feature claims; nodes without a claim depend on the whole prompt."""

    label: str
    keep: torch.Tensor  # [S, R] bool: circuit edges
    features: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node -> info columns
    positions: dict[str, str] = field(default_factory=dict)  # node -> position class; absent: all positions
    kind: str = "feature hypothesis"  # | "complement-only (weaker test)" | "baseline (all inputs resampled)"

    def feature(self, node: str) -> tuple[str, ...]:
        return tuple(self.features.get(node, WHOLE_PROMPT))

    def describe(self, graph: Graph) -> list[dict]:
        """One row per circuit node: its claimed features and position."""
        return [
            {"node": n, "features": "+".join(self.feature(n)), "position": self.positions.get(n, "all")}
            for n in graph.nodes_of(self.keep)
            if n != "logits"
        ]


@dataclass
class Pool:
    """The prompts draws come from; evaluation prompts are its first items."""

    data: TaskData
    structure: np.ndarray  # [N] object: aligned_by columns + token length
    positions: dict  # class -> [N] long position index

    @classmethod
    def of(cls, data, task) -> Pool:
        cols = [data.info[c].astype(str).to_numpy() for c in task.aligned_by]
        key = data.lengths.numpy().astype(str).astype(object)
        for c in cols:
            key = key + "|" + c.astype(object)
        return cls(data, key, task.positions(data) if task.positions else {})

    def __len__(self) -> int:
        return len(self.data)

    def keys(self, features: tuple[str, ...]) -> np.ndarray:
        key = self.structure.copy()
        for f in features:
            key = key + "|" + self.data.info[f].astype(str).to_numpy().astype(object)
        return key


def _groups(keys: np.ndarray) -> list[np.ndarray]:
    _, inverse = np.unique(keys, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.cumsum(np.bincount(inverse))[:-1])


def agreeing_draws(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each prompt, a prompt drawn uniformly among those with the same key (itself included)."""
    out = np.arange(len(keys))
    for idx in _groups(keys):
        out[idx] = idx[rng.integers(len(idx), size=len(idx))]
    return out


def other_draws(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each prompt, another prompt drawn uniformly with the same key (itself only if it is alone)."""
    out = np.arange(len(keys))
    for idx in _groups(keys):
        if len(idx) > 1:
            r = rng.integers(len(idx) - 1, size=len(idx))
            out[idx] = idx[r + (r >= np.arange(len(idx)))]
    return out


@dataclass
class Draws:
    agree: dict[int, np.ndarray]  # circuit source row -> [N] drawn prompt for that node's instance
    other: dict[int, np.ndarray]  # receiver column -> [N] random prompt for its non-circuit edges


def draw(graph: Graph, pool: Pool, hyp: Hypothesis, seed: int, replicate: int = 0) -> Draws:
    """All draws of one resampling replicate, tabled for every prompt of the pool (deterministic)."""
    rng = np.random.default_rng([seed, replicate, zlib.crc32(hyp.label.encode())])
    keep = hyp.keep & graph.edge_exists
    structure = pool.keys(())
    agree = {}
    for u in keep.any(1).nonzero().flatten().tolist():
        feature = hyp.feature(graph.sources[u])
        agree[u] = np.arange(len(pool)) if feature == WHOLE_PROMPT else agreeing_draws(pool.keys(feature), rng)
    nodes = [n for n in graph.nodes_of(keep)] or ["logits"]
    cols = sorted({c for n in nodes + ["logits"] for c in graph.node_receivers(n)})
    return Draws(agree, {c: other_draws(structure, rng) for c in cols})


def closure(graph: Graph, hyp: Hypothesis, draws: Draws, eval_idx: np.ndarray) -> tuple[dict[int, np.ndarray], dict]:
    """Instances reachable from the logits on eval_idx: node (source row; n_sources for logits) -> prompts.
    Also how often a feature-agreeing draw picked a different prompt."""
    keep = (hyp.keep & graph.edge_exists).numpy()
    logits = graph.n_sources
    active = {logits: np.unique(eval_idx)}
    asked = moved = 0
    for n in range(logits, -1, -1):  # parents always come earlier in forward order
        if n not in active:
            continue
        cols = graph.node_receivers("logits" if n == logits else graph.sources[n])
        for u in np.nonzero(keep[:, cols].any(1))[0].tolist():
            drawn = draws.agree[u][active[n]]
            if hyp.feature(graph.sources[u]) != WHOLE_PROMPT:
                asked, moved = asked + len(drawn), moved + int((drawn != active[n]).sum())
            active[u] = np.union1d(active.get(u, drawn[:0]), drawn)
    return active, {"agreeing_draws": asked, "agreeing_draws_moved": moved}


def _position_mask(pool: Pool, hyp: Hypothesis, node: str, prompts: np.ndarray, width: int, device):
    """[n, P, 1] float mask of the positions where node's claim holds, or None for every position."""
    cls = hyp.positions.get(node)
    if cls is None or cls == "all":
        return None
    pos = pool.positions[cls][torch.as_tensor(prompts)].to(device)
    return (torch.arange(width, device=device)[None] == pos[:, None]).unsqueeze(-1)


def _head_or_out(x: torch.Tensor, col: int | None) -> torch.Tensor:
    return x[:, :, col] if col is not None else x


class _Plan:
    """Index bookkeeping shared by the two passes of one chunk."""

    def __init__(self, model, graph: Graph, pool: Pool, hyp: Hypothesis, draws: Draws, active: dict):
        self.graph, self.pool, self.hyp, self.draws, self.active = graph, pool, hyp, draws, active
        self.device, self.dtype = model.device, model.dtype
        self.keep = (hyp.keep & graph.edge_exists).numpy()
        rows = np.unique(np.concatenate(list(active.values())))
        self.width = int(pool.data.lengths[torch.as_tensor(rows)].max())
        self.rows = rows  # prompts of the scrub pass
        self.row_of = np.full(len(pool), -1)
        self.row_of[rows] = np.arange(len(rows))
        # receiver column -> (node it belongs to, prompts of that node's instances, circuit parents)
        self.instances: dict[int, tuple[str, np.ndarray, list[int]]] = {}
        for n, prompts in active.items():
            node = "logits" if n == graph.n_sources else graph.sources[n]
            for c in graph.node_receivers(node):
                self.instances[c] = (node, prompts, np.nonzero(self.keep[:, c])[0].tolist())
        self.circuit_parents = {u for _, _, parents in self.instances.values() for u in parents}
        self.base: dict[int, torch.Tensor] = {}  # column -> [n_instances, P, D]

    def mask(self, u: int, prompts: np.ndarray):
        return _position_mask(self.pool, self.hyp, self.graph.sources[u], prompts, self.width, self.device)

    def plain_prompts(self) -> np.ndarray:
        return np.unique(np.concatenate([self.draws.other[c][p] for c, (_, p, _) in self.instances.items()]))

    def tokens(self, prompts: np.ndarray) -> torch.Tensor:
        return self.pool.data.clean[torch.as_tensor(prompts), : self.width].to(self.device)


def _source_recorder(graph: Graph, wanted: set[int], store: dict):
    """Hooks saving the outputs [B, P, D] of the wanted sources into store (source row -> tensor)."""
    hooks = []
    for name, rows in source_hooks(graph):
        here = [u for u in range(rows.start, rows.stop) if u in wanted]
        if not here:
            continue

        def save(x, hook, rows=rows, here=here):
            for u in here:
                store[u] = _head_or_out(x, u - rows.start if x.dim() == 4 else None)
            return x

        hooks.append((name, save))
    return hooks


def _pass_hooks(plan: _Plan, column_hook, writes: bool) -> list:
    """Hooks that record the circuit sources' outputs (source row -> [B, P, D]) and call
    column_hook(x, c, head, store) for every instance receiver column c (head: c's index in a [B, P, H, D]
    hook, else None); a writing pass gets its own copy of each hooked tensor."""
    store: dict[int, torch.Tensor] = {}
    hooks = _source_recorder(plan.graph, plan.circuit_parents, store)
    for name, cols in receiver_columns(plan.graph):
        here = [c for c in cols if c in plan.instances]
        if not here:
            continue

        def hook(x, hook, here=here, first=cols[0]):
            x = x.clone() if writes else x
            for c in here:
                column_hook(x, c, c - first if x.dim() == 4 else None, store)
            return x

        hooks.append((name, hook))
    return hooks


def _plain_pass(model, plan: _Plan, prompts: np.ndarray) -> None:
    """base[c] for every instance receiver whose random draw is among prompts (one plain forward pass)."""
    local = np.full(len(plan.pool), -1)
    local[prompts] = np.arange(len(prompts))

    def fill(x, c, head, store):
        _, inst, parents = plan.instances[c]
        rows = local[plan.draws.other[c][inst]]
        slots = np.nonzero(rows >= 0)[0]
        if not len(slots):
            return
        r = torch.as_tensor(rows[slots], device=x.device)
        value = _head_or_out(x, head)[r].clone()
        for u in parents:
            m = plan.mask(u, inst[slots])
            value -= store[u][r] if m is None else m * store[u][r]
        if c not in plan.base:
            plan.base[c] = torch.empty(len(inst), plan.width, x.shape[-1], device=x.device, dtype=x.dtype)
        plan.base[c][torch.as_tensor(slots, device=x.device)] = value

    with torch.no_grad():
        model.bridge.run_with_hooks(
            plan.tokens(prompts), fwd_hooks=_pass_hooks(plan, fill, writes=False) + [stop_before_unembedding()]
        )


def _scrub_pass(model, plan: _Plan, eval_rows: np.ndarray, pos: torch.Tensor) -> torch.Tensor:
    """The treeified evaluation, one pass over every prompt holding an instance: logits [n, V] of eval_rows
    at positions pos."""

    def patch(x, c, head, store):
        _, inst, parents = plan.instances[c]
        value = plan.base[c].clone()
        for u in parents:
            parent_rows = torch.as_tensor(plan.row_of[plan.draws.agree[u][inst]], device=x.device)
            m = plan.mask(u, inst)
            value += store[u][parent_rows] if m is None else m * store[u][parent_rows]
        r = torch.as_tensor(plan.row_of[inst], device=x.device)
        if head is None:
            x[r] = value
        else:
            x[r, :, head] = value

    hooks = _pass_hooks(plan, patch, writes=True)
    with torch.no_grad():
        resid = model.bridge.run_with_hooks(plan.tokens(plan.rows), fwd_hooks=hooks + [stop_before_unembedding()])
        return unembed_at(model, resid[torch.as_tensor(eval_rows, device=resid.device)], pos)


def scrubbed_logits(
    model,
    graph: Graph,
    pool: Pool,
    hyp: Hypothesis,
    draws: Draws,
    eval_idx: np.ndarray,
    batch_size: int = 32,
    progress=None,
    chunk_size: int = 512,
) -> tuple[torch.Tensor, dict]:
    """Logits [n, V] at the answer positions of pool items eval_idx under the scrubbed hypothesis, and counts
    (instances, rows of each pass, feature-agreeing draws) for the record. Plain passes run batch_size
    prompts at a time; the tree of up to chunk_size evaluation prompts is evaluated in one pass (the plain
    prompts of a chunk are at most the pool, so larger chunks need fewer plain passes)."""
    out, stats = [], {"instances": 0, "scrub_rows": 0, "plain_rows": 0, "agreeing_draws": 0, "agreeing_draws_moved": 0}
    for start in range(0, len(eval_idx), chunk_size):
        chunk = np.asarray(eval_idx[start : start + chunk_size])
        active, moved = closure(graph, hyp, draws, chunk)
        plan = _Plan(model, graph, pool, hyp, draws, active)
        plain = plan.plain_prompts()
        for s in range(0, len(plain), batch_size):
            _plain_pass(model, plan, plain[s : s + batch_size])
        out.append(_scrub_pass(model, plan, plan.row_of[chunk], pool.data.answer_pos[torch.as_tensor(chunk)]).float())
        stats["instances"] += sum(len(v) for v in active.values())
        stats["scrub_rows"] += len(plan.rows)
        stats["plain_rows"] += len(plain)
        for k, v in moved.items():
            stats[k] += v
        if progress is not None:
            progress.update(len(chunk))
    return torch.cat(out), stats
