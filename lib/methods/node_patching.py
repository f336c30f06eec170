"""Node-level activation patching, many components per forward pass.

A component's output (a head's result, an MLP's output, the residual stream at one layer and position)
is replaced by its value from the other run: `denoise` patches clean values into the corrupted run,
`noise` patches corrupted values into the clean run. Components are stacked along the batch: a pass
over M components runs M copies of the batch, copy m patching component m, and recomputes only from the
earliest of their layers on (lib.core.recompute); components are taken in layer order to keep that late.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lib.core.choices import NODE_PATCH_DIRECTIONS as DIRECTIONS  # noqa: F401 (re-exported)
from lib.core.metrics import data_metric
from lib.core.recompute import Restart


@dataclass(frozen=True)
class Component:
    kind: str  # "head" | "mlp" | "resid"
    layer: int
    index: int = -1  # head index, or position for resid
    label: str = ""  # resid: "resid_pre" or "resid_post"

    @property
    def hook(self) -> str:
        if self.kind == "head":
            return f"blocks.{self.layer}.attn.hook_result"
        if self.kind == "mlp":
            return f"blocks.{self.layer}.hook_mlp_out"
        return f"blocks.{self.layer}.hook_{self.label}"

    @property
    def name(self) -> str:
        if self.kind == "head":
            return f"a{self.layer}.h{self.index}"
        if self.kind == "mlp":
            return f"m{self.layer}"
        return f"{self.label}{self.layer}@{self.index}"


def heads_and_mlps(n_layers: int, n_heads: int) -> list[Component]:
    return [Component("head", l, h) for l in range(n_layers) for h in range(n_heads)] + [
        Component("mlp", l) for l in range(n_layers)
    ]


def residual_positions(n_layers: int, n_positions: int) -> list[Component]:
    """resid_pre of every layer, and the final resid_post, at every position."""
    rows = [(l, "resid_pre") for l in range(n_layers)] + [(n_layers - 1, "resid_post")]
    return [Component("resid", l, p, label) for l, label in rows for p in range(n_positions)]


def patch_metrics(
    model, batch, components: list[Component], direction: str, per_pass: int, progress=None
) -> torch.Tensor:
    """Task metric [len(components), B] with each component patched alone (batched over components)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose from {DIRECTIONS}")
    target, source = (batch.corrupt, batch.clean) if direction == "denoise" else (batch.clean, batch.corrupt)
    target, source = target.to(model.device), source.to(model.device)
    hooks_needed = sorted({c.hook for c in components})
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(source, names_filter=lambda n: n in hooks_needed)
    B = len(target)
    restart = Restart(model, target)
    order = sorted(range(len(components)), key=lambda i: components[i].layer)  # stable: layer by layer
    out = torch.empty(len(components), B, dtype=torch.float64)
    for start in range(0, len(order), per_pass):
        idx = order[start : start + per_pass]
        chunk = [components[i] for i in idx]
        by_hook: dict[str, list[tuple[int, Component]]] = {}
        for m, c in enumerate(chunk):
            by_hook.setdefault(c.hook, []).append((m, c))

        def make_hook(name, items):
            def hook(x, hook):
                x = x.clone()
                src = cache[name]
                for m, c in items:
                    block = slice(m * B, (m + 1) * B)
                    if c.kind == "head":
                        x[block, :, c.index] = src[:, :, c.index]
                    elif c.kind == "mlp":
                        x[block] = src
                    else:
                        x[block, c.index] = src[:, c.index]
                return x

            return hook

        pos = batch.answer_pos.to(model.device).repeat(len(chunk))
        answer = restart.answer_logits(
            min(c.layer for c in chunk), pos, [(h, make_hook(h, i)) for h, i in by_hook.items()], copies=len(chunk)
        )
        repeated = batch.subset(torch.arange(B).repeat(len(chunk)))
        out[idx] = data_metric(answer, repeated).view(len(chunk), B).cpu()
        if progress is not None:
            progress.update(len(chunk))
    return out


def data_patch_metrics(
    model, data, components: list[Component], direction: str, batch_size: int, rows_per_pass: int, progress=None
) -> np.ndarray:
    """Task metric [len(components), N] over all of data, batch by batch (progress counts components x batches)."""
    per_pass = max(1, rows_per_pass // min(batch_size, len(data)))
    return np.concatenate(
        [
            patch_metrics(
                model, data.subset(slice(b, b + batch_size)), components, direction, per_pass, progress
            ).numpy()
            for b in range(0, len(data), batch_size)
        ],
        axis=1,
    )
