"""Forward passes restarted mid-model. A base run's residual stream is cached before every layer; a pass whose
interventions all act at layer l or later recomputes only blocks l.. from that cache, which is exact: nothing
before l differs from the base run. Blocks that need position embeddings from the model (rotary) cannot be
called on a cached stream; there every pass is a full one (same hooks, same numbers, no saving)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lib.core.forward import logits_at, stop_before_unembedding, unembed_at
from lib.core.graph import Graph
from lib.core.model import LoadedModel
from lib.core.patching import as_sources, source_hooks


def run_blocks(model: LoadedModel, x: torch.Tensor, start_layer: int) -> torch.Tensor:
    """The residual stream [B, P, D] after the last block, from x entering block start_layer (hooks that are
    registered on the bridge fire as in a full pass)."""
    for l in range(start_layer, model.n_layers):
        y = model.bridge.blocks[l](x)
        x = y[0] if isinstance(y, tuple) else y
    return x


class Restart:
    """Answer logits of `tokens` under hooks, recomputing only from the first layer the hooks touch. Given a
    graph it also keeps every source's output of the base run (`outs`, [S, B, P, D]) from the same pass."""

    def __init__(self, model: LoadedModel, tokens: torch.Tensor, graph: Graph | None = None):
        self.model, self.tokens = model, tokens.to(model.device)
        self.full = not model.arch.starts_mid_model
        L = model.n_layers
        resid_names = (
            [] if self.full else [f"blocks.{l}.hook_resid_pre" for l in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
        )
        source_names = [] if graph is None else [n for n, _ in source_hooks(graph)]
        saved: dict[str, torch.Tensor] = {}

        def save(name: str):
            def hook(x, hook):
                saved[name] = x.detach()
                return x

            return hook

        if resid_names or source_names:
            hooks: list[tuple[str | Callable, Callable]] = [
                (n, save(n)) for n in dict.fromkeys(resid_names + source_names)
            ]
            with torch.no_grad():
                self.model.bridge.run_with_hooks(self.tokens, fwd_hooks=hooks + [stop_before_unembedding()])
        self.resid = [saved[n] for n in resid_names]  # [L + 1] x [B, P, D]: entering each block, the final stream
        self.outs = torch.cat([as_sources(saved[n]) for n in source_names]) if source_names else None

    def answer_logits(self, start_layer: int, pos: torch.Tensor, hooks: list, copies: int = 1) -> torch.Tensor:
        """[copies * B, V] logits at pos ([copies * B]) of `copies` stacked copies of the base run with `hooks`,
        every one of which acts at start_layer or later (n_layers: only the final stream's hooks)."""
        for name, _ in hooks:  # a hook before the start layer would silently not fire
            layer = int(name.split(".")[1]) if name.startswith("blocks.") else -1
            if layer < min(start_layer, self.model.n_layers - 1):
                raise ValueError(f"hook {name} acts before layer {start_layer}, where this pass starts")
        if self.full:
            return logits_at(self.model, self.tokens.repeat(copies, 1), pos, hooks)
        L, bridge = self.model.n_layers, self.model.bridge
        start_layer = min(max(start_layer, 0), L)
        x = self.resid[start_layer].repeat(copies, 1, 1)
        with torch.no_grad():
            if start_layer < L:
                with bridge.hooks(fwd_hooks=hooks):
                    x = run_blocks(self.model, x, start_layer)
            else:  # no block runs: the hooks on the final stream are applied to it directly
                for name, fn in hooks:
                    if name not in (f"blocks.{L - 1}.hook_resid_post", f"blocks.{L - 1}.hook_out"):
                        raise ValueError(f"hook {name} acts before the final stream")
                    x = fn(x, hook=bridge.blocks[L - 1].hook_out)
            return unembed_at(self.model, x, pos)
