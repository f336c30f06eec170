"""A shared dictionary of two models (a crosscoder, Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer
Features and Model Diffing"): one latent space, each model with its own encoder and decoder. Encoding sums the
two encoders' reads, W_enc_A x_A + W_enc_B x_B, which is one encoder over the concatenation [x_A, x_B]; the
decoders write [x_A, x_B] side by side. So the suite's dictionary trainer (lib.tools.dictionaries.train_one,
TopK with AuxK) trains it as an autoencoder of the concatenation. Each model's activations are first scaled to
a mean norm of sqrt(d_model), as Lindsey et al. normalize, so neither model dominates the loss."""

from __future__ import annotations

import torch

from lib.features.dictionary import Dictionary
from lib.tools.dictionaries import train_one


def scale_of(x: torch.Tensor) -> float:
    """The factor that brings the mean norm of x [T, D] to sqrt(D)."""
    return float(x.shape[1] ** 0.5 / x.double().norm(dim=1).mean().clamp_min(1e-12))


def train(
    x_a: torch.Tensor, x_b: torch.Tensor, width: int, k: int, steps: int, batch: int, lr: float, seed: int, bar=None
) -> tuple[Dictionary, tuple[float, float]]:
    """(crosscoder over [x_A * scale_A, x_B * scale_B], (scale_A, scale_B)) from paired activations [T, D_A],
    [T, D_B] (row t of each is the same token of the same prompt)."""
    scales = (scale_of(x_a), scale_of(x_b))
    x = torch.cat([x_a.float() * scales[0], x_b.float() * scales[1]], 1)
    cfg = {
        "architecture": "topk",
        "k": k,
        "hook_name": "crosscoder",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "training": {
            "trainer": "lib.tools.crosscoder (lib.tools.dictionaries.train_one on [x_A, x_B])",
            "steps": steps,
            "batch": batch,
            "lr": lr,
            "seed": seed,
            "d_a": x_a.shape[1],
            "scales": list(scales),
        },
    }
    torch.manual_seed(seed)
    return train_one(x, x, width, k, steps, batch, lr, seed, dead_after=20 * batch, cfg=cfg, bar=bar), scales
