"""The load-time probe of DEFINITIONS.md, Patching an edge: every receiver's input must be the sum of its sources' outputs plus a
constant, or the model is refused in one line (a safety net under the structural rules of lib.core.architecture)."""

from __future__ import annotations

import torch

from lib.core.errors import UserError
from lib.core.forward import capture
from lib.core.graph import graph_of
from lib.core.patching import as_sources, receiver_groups, source_hooks


def identity_error(model) -> tuple[str, float] | None:
    """(receiver hook, error) where a receiver's input on a probe batch is not the sum of the outputs of the
    sources that write before it plus a constant (DEFINITIONS.md, Patching an edge), relative to the input's size; None if all hold.
    Run at every load, so an architecture no rule above foresaw is refused rather than measured wrongly."""
    g = graph_of(model)
    gen = torch.Generator().manual_seed(0)
    vocab = min(model.bridge.cfg.d_vocab, len(model.tokenizer))
    tokens = torch.randint(0, vocab, (2, 8), generator=gen).to(model.device)
    names = list(dict.fromkeys([n for n, _ in source_hooks(g)] + [n for n, _, _ in receiver_groups(g)]))
    cache = {n: x.double() for n, x in capture(model, tokens, names).items()}
    outs = torch.cat([as_sources(cache[n]) for n, _ in source_hooks(g)])  # [S, B, P, D]
    tolerance = 1e-4 if model.dtype in (torch.float32, torch.float64) else 5e-2
    for name, _, n_before in receiver_groups(g):
        x = cache[name] if cache[name].dim() == 4 else cache[name].unsqueeze(2)  # [B, P, h, D]
        rest = x - outs[:n_before].sum(0).unsqueeze(2)
        error = ((rest - rest[:1, :1]).abs().max() / x.abs().max().clamp_min(1e-12)).item()
        if error > tolerance:
            return name, error
    return None


def check_identity(model) -> None:
    bad = identity_error(model)
    if bad:
        raise UserError(
            f"model {model.name} ({model.arch.name}) is not supported: the input of {bad[0]} is not "
            f"the sum of its sources' outputs plus a constant (off by {bad[1]:.2g} of its size on a "
            "probe batch), so its edges cannot be patched exactly"
        )
