"""Post-attention norms split across the heads (Gemma 2; README "Architectures"): a block that normalizes its
attention output before adding it to the residual stream, resid_mid = resid_pre + g * a / rms(a) with
a = sum_h result_h, adds exactly

    out_h = g * result_h / rms(a)          (rms(a) = sqrt(mean(a^2) + eps), computed once per position)

per head: each head's share of the normalized output, at the scale of the run it comes from. Every run is the
model's own (rms is recomputed live), and every receiver's input is again the sum of its sources' outputs, so
the edge identities of DEFINITIONS.md hold. The split is done in the bridge: a permanent hook on attn.hook_result
writes out_h there (so every hook user sees what each head adds) and the norm passes its input through.
The scale goes through a hook of its own, blocks.l.attn.hook_post_scale [B, P, 1], which attribution freezes as it
freezes every norm scale. The MLP's post-norm needs nothing: hook_mlp_out is already its output (one source)."""

from __future__ import annotations

import torch

from lib.core.errors import UserError

SCALE_HOOK = "blocks.{layer}.attn.hook_post_scale"


def post_norm_names(bridge) -> list[str]:
    """The post-norms the blocks have (ln1_post after attention, ln2_post after the MLP)."""
    return [n for n in ("ln1_post", "ln2_post") if hasattr(bridge.blocks[0], n)]


def norm_gain(norm) -> torch.Tensor:
    """The norm's effective gain g (Gemma stores it as an offset from 1), float32."""
    w = norm.weight.detach().float()
    return 1.0 + w if getattr(norm, "uses_weight_offset", False) else w


def norm_eps(norm) -> float:
    """The norm's epsilon, as its Hugging Face module holds it."""
    orig = norm.original_component
    eps = getattr(orig, "eps", None)
    if eps is None:
        eps = getattr(orig, "variance_epsilon", 1e-6)
    return float(eps)


def split_attention_post_norms(bridge, name: str) -> bool:
    """Move each block's post-attention RMSNorm into its heads' results (module docstring); False if the
    model has none. One line if it cannot be done exactly (an attention output bias or a LayerNorm there)."""
    from transformer_lens.hook_points import HookPoint

    if "ln1_post" not in post_norm_names(bridge):
        return False
    if not str(bridge.cfg.normalization_type).startswith("RMS"):
        raise UserError(
            f"model {name} is not supported: its post-attention norm is a LayerNorm, whose mean removal "
            "mixes heads, so the normalized output is not split across heads"
        )
    for layer, block in enumerate(bridge.blocks):
        b_o = getattr(block.attn, "b_O", None)
        if b_o is not None and torch.as_tensor(b_o).abs().max() > 0:
            raise UserError(
                f"model {name} is not supported: its attention output has a bias before the post-attention "
                "norm, whose normalized share belongs to no head"
            )
        norm = block.ln1_post
        gain, eps = norm_gain(norm), norm_eps(norm)
        scale_hook = HookPoint()
        block.attn.add_module("hook_post_scale", scale_hook)
        scale_hook.name = SCALE_HOOK.format(layer=layer)
        bridge._hook_registry[scale_hook.name] = scale_hook
        passed: dict = {}

        def share(x, hook, gain=gain, eps=eps, scale_hook=scale_hook):  # x: [B, P, H, D] per-head results
            a = x.float().sum(2)  # [B, P, D] the norm's input
            scale = scale_hook((a.pow(2).mean(-1, keepdim=True) + eps).sqrt())  # [B, P, 1]
            return (x.float() * (gain.to(x.device) / scale)[:, :, None, :]).to(x.dtype)

        def keep_input(x, hook, passed=passed):
            passed["x"] = x
            return x

        def pass_through(x, hook, passed=passed):
            return passed.pop("x").to(x.dtype)

        bridge.add_hook(f"blocks.{layer}.attn.hook_result", share, is_permanent=True)
        bridge.add_hook(f"blocks.{layer}.ln1_post.hook_in", keep_input, is_permanent=True)
        bridge.add_hook(f"blocks.{layer}.ln1_post.hook_out", pass_through, is_permanent=True)
    return True


def check_readable(model, hooks, where: str) -> None:
    """One line for a dictionary reading ln1_post's own scale or normalized value: after the split the norm sees
    its already-normalized input, so those hooks no longer hold what a set trained on the model read there."""
    if "ln1_post" not in model.arch.post_norms:
        return
    moved = [h for h in hooks if ".ln1_post.hook_scale" in h or ".ln1_post.hook_normalized" in h]
    if moved:
        raise UserError(
            f"{where} reads {moved[0]}, which this suite's split of the post-attention norm across heads changes "
            "(the norm's scale is blocks.l.attn.hook_post_scale, its output hook_attn_out)"
        )
