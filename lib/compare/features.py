"""Feature alignment between two models' dictionaries (one per site both sets have): activation correlation of
every feature pair over the same prompts and positions, one-to-one (Hungarian) matching and best partners
both ways, and how alike matched features act on the task (node effects, as 09 computes them); and a shared
dictionary (crosscoder) read out by each latent's decoder norms in the two models."""

from __future__ import annotations

import numpy as np
import torch

from lib.core.forward import capture, stop_before_unembedding, unembed_at
from lib.core.metrics import data_metric
from lib.features.dictionary import Dictionary
from lib.features.effects import node_effects
from lib.features.splice import site as site_of
from lib.methods.alignment import Matching, correlations, match


def common_sites(set_a: dict, set_b: dict) -> list[str]:
    """The dictionaries (single-site ones) both sets have, by name, in set A's order."""
    return [n for n, d in set_a.items() if isinstance(d, Dictionary) and isinstance(set_b.get(n), Dictionary)]


def feature_activations(model, dictionaries: dict, names: list[str], data, batch_size: int) -> dict:
    """{name: [T, d_sae]} each dictionary's features on the clean prompts at every real position but the first
    (BOS), read from the unspliced model."""
    hooks = sorted({dictionaries[n].hook_name for n in names})
    out: dict[str, list] = {n: [] for n in names}
    for start in range(0, len(data), batch_size):
        part = data.subset(slice(start, start + batch_size))
        cache = capture(model, part.clean.to(model.device), hooks)
        real = part.real.clone()
        real[:, 0] = False
        for n in names:
            d = dictionaries[n]
            x = cache[d.hook_name][real.to(model.device)]
            out[n].append(d.encode(x.to(d.W_enc.dtype)).double().cpu())
    return {n: torch.cat(v) for n, v in out.items()}


def feature_effects(model, dictionaries: dict, names: list[str], data, batch_size: int) -> dict:
    """{name: [d_sae]} each feature's effect on the task metric, summed over prompts and positions: attribution
    patching from the corrupted prompts with every dictionary spliced in (lib.features.effects, 09's default)."""
    chosen = {n: dictionaries[n] for n in names}
    total = {n: torch.zeros(dictionaries[n].d_sae, dtype=torch.float64) for n in names}
    by_site = {site_of(d): n for n, d in chosen.items()}
    for start in range(0, len(data), batch_size):
        part = data.subset(slice(start, start + batch_size))
        effects = node_effects(model, chosen, part, "attrib", "corrupted")
        for s, e in effects.items():
            total[by_site[s]] += e["features"].double().sum((0, 1)).cpu()
    return total


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm > 0 else float("nan")


def site_row(name: str, m: Matching, effects_a: np.ndarray, effects_b: np.ndarray, min_correlation: float) -> dict:
    """One site's matching summary: how many features are alive, matched, matched well; splits and merges; how
    alike matched features' effects are (cosine and largest relative difference over the matched pairs)."""
    ea, eb = effects_a[m.pairs[:, 0]], effects_b[m.pairs[:, 1]]
    scale = max(float(np.abs(effects_a).max(initial=0.0)), float(np.abs(effects_b).max(initial=0.0)), 1e-12)
    return {
        "site": name,
        "features_a": len(m.alive_a),
        "features_b": len(m.alive_b),
        "alive_a": int(m.alive_a.sum()),
        "alive_b": int(m.alive_b.sum()),
        "matched": len(m.pairs),
        "matched_correlation_mean": float(m.pair_correlation.mean()) if len(m.pairs) else np.nan,
        "matched_correlation_median": float(np.median(m.pair_correlation)) if len(m.pairs) else np.nan,
        "share_matched_at_min_correlation": float(
            (m.pair_correlation >= min_correlation).sum() / max(m.alive_a.sum(), 1)
        ),
        **m.splits_and_merges(min_correlation),
        "effect_cosine": cosine(ea, eb),
        "effect_max_difference": float(np.abs(ea - eb).max(initial=0.0)) / scale,
    }


def align_site(acts_a: torch.Tensor, acts_b: torch.Tensor, effects_a: np.ndarray, effects_b: np.ndarray) -> Matching:
    """Hungarian matching on activation correlation; exact ties (features whose activations are proportional on
    every token seen, e.g. two features that fire on one token only) go to the pair of closer node effects and
    mean activations (each distance scaled by its largest value)."""

    def spread(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = np.abs(a[:, None] - b[None])
        return d / max(float(d.max()), 1e-300)

    means_a, means_b = acts_a.mean(0).numpy(), acts_b.mean(0).numpy()
    tie_break = spread(effects_a, effects_b) + spread(means_a, means_b)
    return match(*correlations(acts_a, acts_b), tie_break=tie_break)


def relative_decoder_norms(crosscoder: Dictionary, d_a: int) -> np.ndarray:
    """Each latent's ||decoder in B|| / (||decoder in A|| + ||decoder in B||): 0 only A writes it, 1 only B,
    1/2 both alike (Lindsey et al. 2024's relative decoder norm). The crosscoder's output is [x_A, x_B]."""
    w = crosscoder.W_dec.detach().double()  # [latents, d_a + d_b]
    norm_a, norm_b = w[:, :d_a].norm(dim=1), w[:, d_a:].norm(dim=1)
    return (norm_b / (norm_a + norm_b).clamp_min(1e-300)).cpu().numpy()


def hook_gradients(model, data, hook: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """At hook, over the real positions but BOS of every prompt: the clean and corrupted activations [T, D] and
    the gradient of the summed task metric with respect to the clean activation [T, D]."""
    clean, corrupt, grads = [], [], []
    for start in range(0, len(data), batch_size):
        part = data.subset(slice(start, start + batch_size))
        real = part.real.clone()
        real[:, 0] = False
        real = real.to(model.device)
        leaf = {}

        def keep(x, hook, leaf=leaf):
            leaf["x"] = x.detach().clone().requires_grad_(True)
            return leaf["x"]

        with torch.enable_grad():
            resid = model.bridge.run_with_hooks(
                part.clean.to(model.device), fwd_hooks=[(hook, keep), stop_before_unembedding()]
            )
            data_metric(unembed_at(model, resid, part.answer_pos.to(model.device)), part).sum().backward()
        grads.append(leaf["x"].grad[real].double().cpu())
        clean.append(leaf["x"].detach()[real].double().cpu())
        corrupt.append(capture(model, part.corrupt.to(model.device), [hook])[hook][real].double().cpu())
    return torch.cat(clean), torch.cat(corrupt), torch.cat(grads)


def latent_effects(crosscoder: Dictionary, d_a: int, side_a: tuple, side_b: tuple, scales: tuple) -> tuple:
    """Each crosscoder latent's effect on the task metric in A and in B (attribution patching from the corrupted
    prompts): sum over tokens of (f_clean - f_corrupt) * (the latent's decoder in that model . d metric / d x).
    side_*: (clean, corrupt, gradient) [T, D] of hook_gradients; scales: each model's activation normalization."""
    (ca, xa, ga), (cb, xb, gb) = side_a, side_b
    sa, sb = scales
    enc = crosscoder.to(dtype=torch.float64)
    f_clean = enc.encode(torch.cat([ca * sa, cb * sb], 1))
    f_corrupt = enc.encode(torch.cat([xa * sa, xb * sb], 1))
    w = enc.W_dec.detach()
    # the latent writes W_dec[:, :d_a] / sa into A's stream (activations were scaled by sa for training)
    write_a = (f_clean - f_corrupt) * ((ga @ w[:, :d_a].T) / sa)  # [T, latents]
    write_b = (f_clean - f_corrupt) * ((gb @ w[:, d_a:].T) / sb)
    return write_a.sum(0).numpy(), write_b.sum(0).numpy()
