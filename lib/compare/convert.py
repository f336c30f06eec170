"""Convertibility: a linear map from model A's activations to model B's at each residual-stream layer (ridge,
fitted on discovery prompts, R^2 on held-out ones), and cross-model patching: B run with its residual stream
at a layer replaced by the map of A's, the whole stream or only its circuit's part, on held-out prompts."""

from __future__ import annotations

import numpy as np
import torch

from lib.core.forward import capture, logits_at, unembed_at
from lib.core.graph import Graph
from lib.core.metrics import data_metric, kl_divergence
from lib.core.patching import source_outputs
from lib.methods import intervals
from lib.methods.alignment import LinearMap, fit_map, r_squared


def resid_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def layer_pairs(n_layers_a: int, n_layers_b: int) -> list[tuple[int, int]]:
    """A's layers with the B layer at the same relative depth: the first B layer whose depth share (l + 1) / n
    reaches A's (the same layer when the depths agree)."""
    return [(l, max(0, -(-(l + 1) * n_layers_b // n_layers_a) - 1)) for l in range(n_layers_a)]


def residuals(model, data, layers: list[int], batch_size: int) -> dict[int, torch.Tensor]:
    """{layer: [T, D]} the residual stream after each layer at every real position of the clean prompts."""
    out: dict[int, list] = {l: [] for l in layers}
    for start in range(0, len(data), batch_size):
        part = data.subset(slice(start, start + batch_size))
        cache = capture(model, part.clean.to(model.device), [resid_hook(l) for l in layers])
        real = part.real.to(model.device)
        for l in layers:
            out[l].append(cache[resid_hook(l)][real].double().cpu())
    return {l: torch.cat(v) for l, v in out.items()}


def circuit_parts(model, graph: Graph, writers: torch.Tensor, data, layers: list[int], batch_size: int) -> dict:
    """{layer: [T, D]} the circuit's part of the residual stream after each layer: the summed outputs of its
    writing sources (writers [S] bool) that write before that point, at every real position."""
    out: dict[int, list] = {l: [] for l in layers}
    for start in range(0, len(data), batch_size):
        part = data.subset(slice(start, start + batch_size))
        outputs = source_outputs(model, graph, part.clean.to(model.device))  # [S, B, P, D]
        real = part.real.to(outputs.device)
        for l in layers:
            n_before = graph.sources_before_attn(l + 1) if l + 1 < graph.n_layers else graph.n_sources
            chosen = writers[:n_before].to(outputs.device)
            out[l].append(outputs[:n_before][chosen].sum(0)[real].double().cpu())
    return {l: torch.cat(v) for l, v in out.items()}


def fit_maps(x_train: dict, y_train: dict, x_test: dict, y_test: dict, pairs, alpha: float | None) -> tuple[dict, list]:
    """Ridge maps A layer -> B layer (alpha None: chosen by cross-validation on the training rows) and their
    held-out R^2 rows."""
    maps, rows = {}, []
    for la, lb in pairs:
        fit = fit_map(x_train[la], y_train[lb], alpha)
        maps[(la, lb)] = fit
        rows.append(
            {
                "layer_a": la,
                "layer_b": lb,
                "r2_held_out": r_squared(y_test[lb], fit(x_test[la])),
                "r2_train": r_squared(y_train[lb], fit(x_train[la])),
                "r2_identity": r_squared(y_test[lb], x_test[la]) if x_test[la].shape == y_test[lb].shape else np.nan,
                "alpha": fit.alpha,
                "n_train_tokens": len(x_train[la]),
                "n_test_tokens": len(x_test[la]),
            }
        )
    return maps, rows


def _scatter(values: torch.Tensor, real: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values [T, D] at the real positions of real [B, P], zeros elsewhere, as like's [B, P, D]."""
    out = torch.zeros_like(like)
    out[real] = values.to(like.dtype)
    return out


def _replace(x: torch.Tensor, real: torch.Tensor, replacement: torch.Tensor, subtract: torch.Tensor | None):
    """x [B, P, D] with its real positions replaced by replacement [T, D], or by x - subtract + replacement."""
    new = _scatter(replacement, real, x)
    if subtract is None:
        return torch.where(real[..., None], new, x)
    return x - _scatter(subtract, real, x) + new


def patched_runs(model_b, data_b, patches: list[tuple], batch_size: int, restart: bool = True) -> list[torch.Tensor]:
    """B's answer logits [N, V] (float64, CPU) for each patch (layer_b, replacement [T, D], subtract [T, D] or
    None): its residual stream after layer_b replaced at every real position by replacement, or, for a part only,
    by x - subtract + replacement. One base pass per batch caches the stream (lib.core.recompute.Restart); each
    patch recomputes only the blocks after its layer (restart False, or a model that cannot restart mid-model:
    full passes with a hook, the same numbers)."""
    from lib.core.recompute import Restart, run_blocks

    out: list[list] = [[] for _ in patches]
    offset = 0
    for start in range(0, len(data_b), batch_size):
        part = data_b.subset(slice(start, start + batch_size))
        tokens, real = part.clean.to(model_b.device), part.real.to(model_b.device)
        pos = part.answer_pos.to(model_b.device)
        rows = slice(offset, offset + int(real.sum()))
        offset = rows.stop
        base = Restart(model_b, tokens) if restart else None
        for i, (layer_b, replacement, subtract) in enumerate(patches):
            cut = None if subtract is None else subtract[rows]
            if base is None or base.full:

                def hook(x, hook, new=replacement[rows], cut=cut, real=real):
                    return _replace(x, real, new, cut)

                logits = logits_at(model_b, tokens, pos, [(resid_hook(layer_b), hook)])
            else:
                with torch.no_grad():
                    x = _replace(base.resid[layer_b + 1], real, replacement[rows], cut)
                    logits = unembed_at(model_b, run_blocks(model_b, x, layer_b + 1), pos)
            out[i].append(logits.double().cpu())
    return [torch.cat(o) for o in out]


def patching_row(
    data_b, patched: torch.Tensor, clean_logits: torch.Tensor, clean, corrupt, n_bootstrap: int, seed: int
) -> dict:
    """How much of B's behaviour survives a patch: normalized task metric (ratio of means against B's own clean
    and corrupted metrics) and KL(B clean || B patched) at the answer, with 95 % bootstrap intervals."""
    m = data_metric(patched.to(data_b.correct.device), data_b).cpu().numpy()
    kl = kl_divergence(clean_logits, patched).cpu().numpy()
    row = {"preserved": float(intervals.ratio_of_means(m, clean, corrupt)), "kl": float(kl.mean())}
    if n_bootstrap:
        ci = dict(n_resamples=n_bootstrap, seed=seed)
        row |= intervals.columns("preserved", intervals.ratio_of_means, m, clean, corrupt, **ci)
        row |= intervals.columns("kl", intervals.mean, kl, **ci)
    return row


__all__ = ["LinearMap", "circuit_parts", "fit_maps", "layer_pairs", "patched_runs", "patching_row", "residuals"]
