"""Direct logit attribution: the final residual stream split into embedding, heads and MLPs,
through the final norm (LayerNorm: mean removed; RMSNorm: not) with the scale of the full residual stream
frozen, onto the answer direction."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lib.core.errors import UserError
from lib.core.model import LoadedModel


@dataclass
class DLAResult:
    components: list[str]  # "embed", "a{l}.h{h}", "m{l}"
    attributions: torch.Tensor  # [N, C] per item and component
    bias: torch.Tensor  # [N] attention-output and unembedding biases along the direction
    model_diff: torch.Tensor  # [N] the model's logit difference along the same direction
    bias_spread: float  # max |b_n - mean b| of the unexplained residual vector b_n = final - sum of components


def component_names(n_layers: int, n_heads: int) -> list[str]:
    return (
        ["embed"] + [f"a{l}.h{h}" for l in range(n_layers) for h in range(n_heads)] + [f"m{l}" for l in range(n_layers)]
    )


def answer_weights(logits: torch.Tensor, data) -> torch.Tensor:
    """Per item a vocabulary weight vector w [N, V] so that w . logits is the task's logit difference.

    logit_diff: +1 correct, -1 wrong; logit_minus_max: -1 on the wrong name with the largest logit;
    prob_diff: mean over the correct set minus mean over the wrong set.
    """
    n, v = logits.shape
    w = torch.zeros(n, v, dtype=torch.float64, device=logits.device)
    correct, wrong = data.correct.to(logits.device), data.wrong.to(logits.device)
    if data.metric_kind == "logit_minus_max":
        masked = torch.where(
            wrong >= 0, logits.gather(-1, wrong.clamp_min(0)), torch.full_like(wrong, -1e30, dtype=logits.dtype)
        )
        wrong = wrong.gather(-1, masked.argmax(-1, keepdim=True))
    if data.metric_kind in ("logit_diff", "logit_minus_max"):
        correct, wrong = correct[:, :1], wrong[:, :1]
    for ids, sign in ((correct, 1.0), (wrong, -1.0)):
        valid = (ids >= 0).double()
        w.scatter_add_(1, ids.clamp_min(0), sign * valid / valid.sum(-1, keepdim=True))
    return w


def direct_logit_attribution(model: LoadedModel, data, batch_size: int = 64, progress=None) -> DLAResult:
    if model.arch.softcap is not None:
        raise UserError(
            f"DLA is not defined for model {model.name}: its logits are soft-capped (tanh), so they "
            "are not a sum of the components' direct effects"
        )
    bridge, L = model.bridge, model.n_layers
    centre = model.arch.norm == "LN"
    names = (
        ["blocks.0.hook_resid_pre", f"blocks.{L - 1}.hook_resid_post", "ln_final.hook_scale"]
        + [f"blocks.{l}.attn.hook_result" for l in range(L)]
        + [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    )
    W_U, b_U = bridge.W_U.double(), bridge.b_U.double()  # [D, V], [V]
    attributions, biases, diffs, bias_vectors = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data.subset(slice(start, start + batch_size)).to(model.device)
            logits, cache = bridge.run_with_cache(batch.clean, names_filter=lambda n: n in names)
            rows = torch.arange(len(batch), device=model.device)
            pos = batch.answer_pos

            def at(name, cache=cache, rows=rows, pos=pos):
                return cache[name][rows, pos].double()

            comps = torch.cat(
                [
                    at("blocks.0.hook_resid_pre")[:, None],
                    torch.cat([at(f"blocks.{l}.attn.hook_result") for l in range(L)], dim=1),  # [B, L*H, D]
                    torch.stack([at(f"blocks.{l}.hook_mlp_out") for l in range(L)], dim=1),
                ],
                dim=1,
            )  # [B, C, D]
            final = at(f"blocks.{L - 1}.hook_resid_post")  # [B, D]
            bias_resid = final - comps.sum(1)  # attention output biases (b_O), not part of any head
            bias_vectors.append(bias_resid.cpu())
            scale = at("ln_final.hook_scale")  # [B, 1]
            w = answer_weights(logits[rows, pos].double(), batch)  # [B, V]
            direction = w @ W_U.T  # [B, D]

            def project(
                x, direction=direction, scale=scale
            ):  # centre (LayerNorm's mean removal only), frozen scale, onto the direction
                x = x - x.mean(-1, keepdim=True) if centre else x
                return (x * direction.unsqueeze(-2) if x.dim() == 3 else x * direction).sum(-1) / (
                    scale if x.dim() == 2 else scale.unsqueeze(-1)
                ).squeeze(-1)

            attributions.append(project(comps).cpu())
            biases.append((project(bias_resid) + w @ b_U).cpu())
            diffs.append((w * logits[rows, pos].double()).sum(-1).cpu())
            if progress is not None:
                progress.update(len(batch))
    b = torch.cat(bias_vectors)
    return DLAResult(
        component_names(L, model.n_heads),
        torch.cat(attributions),
        torch.cat(biases),
        torch.cat(diffs),
        float((b - b.mean(0)).abs().max()),
    )


def residual_by_layer(model: LoadedModel, data, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """The answer-position residual stream layer by layer, through the final norm with its frozen scale onto
    the answer direction (a logit lens of the answer direction), per item:
    stream [N, 2L+1] accumulated projection at resid_pre 0, then after each attention and each MLP (+ the
    unembedding bias, so the last equals the model's logit difference); write [N, 2L+1] what the embedding,
    each attention layer and each MLP adds; norms [N, 2L+1] of those writes (L2, residual-stream units)."""
    if model.arch.softcap is not None:
        raise UserError(
            f"the residual-stream view is not defined for model {model.name}: its logits are "
            "soft-capped (tanh), so no projection adds up to them"
        )
    bridge, L = model.bridge, model.n_layers
    names = (
        ["blocks.0.hook_resid_pre", "ln_final.hook_scale"]
        + [f"blocks.{l}.hook_attn_out" for l in range(L)]
        + [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    )
    W_U, b_U = bridge.W_U.double(), bridge.b_U.double()
    centre = model.arch.norm == "LN"
    out = {"stream": [], "write": [], "norms": []}
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data.subset(slice(start, start + batch_size)).to(model.device)
            logits, cache = bridge.run_with_cache(batch.clean, names_filter=lambda n: n in names)
            rows = torch.arange(len(batch), device=model.device)

            def at(name, cache=cache, rows=rows, batch=batch):
                return cache[name][rows, batch.answer_pos].double()

            writes = [at("blocks.0.hook_resid_pre")]
            for l in range(L):
                writes += [at(f"blocks.{l}.hook_attn_out"), at(f"blocks.{l}.hook_mlp_out")]
            writes = torch.stack(writes, 1)  # [B, 2L+1, D]; attention writes include its output bias
            w = answer_weights(logits[rows, batch.answer_pos].double(), batch)
            direction = w @ W_U.T  # [B, D]
            centred = writes - writes.mean(-1, keepdim=True) if centre else writes
            projected = (centred * direction[:, None]).sum(-1) / at("ln_final.hook_scale")  # [B, 2L+1]
            out["write"].append(projected.cpu())
            out["stream"].append((projected.cumsum(1) + (w @ b_U)[:, None]).cpu())
            out["norms"].append(writes.norm(dim=-1).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def stage_names(n_layers: int) -> list[str]:
    """Where each column of residual_by_layer is read: resid_pre 0 (the embedding), then per layer resid_mid
    (after its attention) and resid_post (after its MLP; in a parallel block both are after the block's input)."""
    return ["resid_pre 0"] + [f"{stream} {l}" for l in range(n_layers) for stream in ("resid_mid", "resid_post")]
