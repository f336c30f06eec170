"""Forward passes of a loaded model (lib.core.model.LoadedModel) that end at the answer position: logits at one
position per row, and a hook that stops the pass before the unembedding."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lib.core.architecture import apply_softcap


def answer_logits(model, tokens: torch.Tensor, pos: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits at each row's answer position, [N, V], computed in batches (no grad)."""
    out = []
    for start in range(0, len(tokens), batch_size):
        t = tokens[start : start + batch_size].to(model.device)
        p = pos[start : start + batch_size].to(model.device)
        out.append(logits_at(model, t[:, : int(p.max()) + 1], p).float())
    return torch.cat(out)


def stop_before_unembedding() -> tuple:
    """A forward hook that ends the pass with the final residual stream ([B, P, D]) as its output, at the
    final norm's input: later hooks (e.g. backward hooks on the last resid_post) are already in place."""
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    fired = []

    def stop(x, hook):
        if not fired:  # only the pass itself; applying ln_final afterwards goes through
            fired.append(True)
            raise StopAtLayerException(x)
        return x

    return "ln_final.hook_in", stop


def unembed_at(model, resid: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Final norm and unembedding of the residual stream [B, P, D] at one position per row: [B, V]."""
    rows = torch.arange(len(resid), device=resid.device)
    logits = model.bridge.unembed(model.bridge.ln_final(resid[rows, pos.to(resid.device)][:, None]))[:, 0]
    return apply_softcap(logits, model.arch.softcap)


def logits_at(model, tokens: torch.Tensor, pos: torch.Tensor, hooks: Sequence = (), grad: bool = False) -> torch.Tensor:
    """Logits [B, V] at one position per row of a forward pass with hooks; the unembedding (a third of
    GPT-2 small's forward FLOPs) runs at those positions only."""
    with torch.set_grad_enabled(grad):
        resid = model.bridge.run_with_hooks(tokens, fwd_hooks=[*hooks, stop_before_unembedding()])
        return unembed_at(model, resid, pos)


def capture(model, tokens: torch.Tensor, hook_names) -> dict:
    """{hook name: activation} of one forward pass (no grad), keyed by the names asked for (a hook that is an
    alias reports another name to its hook function)."""
    cache = {}

    def keep(name):
        def hook(x, hook):
            cache[name] = x.detach()
            return x

        return hook

    with torch.no_grad():
        model.bridge.run_with_hooks(tokens.to(model.device), fwd_hooks=[(n, keep(n)) for n in hook_names])
    return cache
