"""Architecture facts (README, Models, README "Architectures"), read from the bridge's config and structure, never
from a model's name; the ones the edge identities of DEFINITIONS.md, Patching an edge do not hold for are refused here, before any work.

Grouped-query attention is ungrouped at load (k and v projections repeated per query head, the peer libraries'
convention), so every graph has k and v receivers per query head and the computation is unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch

from lib.core.errors import UserError
from lib.core.post_norm import post_norm_names


@dataclass(frozen=True)
class Architecture:
    """What the graph and the interventions need to know about a loaded model."""

    name: str  # the Hugging Face class, e.g. LlamaForCausalLM (recorded, never branched on)
    norm: str  # "LN" (mean removed) or "RMS"
    parallel: bool  # attention and MLP read the same residual stream (GPT-NeoX, GPT-J)
    positional: str  # "standard" (learned, added to the embedding) or "rotary", ...
    n_kv_heads: int  # key/value heads before ungrouping (= n_heads without GQA)
    softcap: float | None  # final logit soft-cap: logits = cap * tanh(logits / cap)
    post_norms: tuple = ()  # norms applied to a block's attention / MLP output before the residual stream

    @property
    def starts_mid_model(self) -> bool:
        """Whether blocks can be called directly on a cached residual stream (ACDC's partial recompute):
        only with positions added to the embedding; rotary blocks need position embeddings from the model."""
        return self.positional == "standard"

    def describe(self) -> dict:
        return asdict(self)


def ungroup_kv(hf):
    """(model, n_kv_heads): a grouped-query model rebuilt with one k/v projection per query head (each a copy
    of its group's), which computes the same function; other models are returned as they are."""
    cfg = hf.config
    n_heads, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None)
    if not n_kv or n_kv == n_heads:
        return hf, n_heads
    group = n_heads // n_kv
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    state = {}
    for key, value in hf.state_dict().items():
        if key.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias")):
            value = value.view(n_kv, head_dim, *value.shape[1:]).repeat_interleave(group, 0)
            value = value.reshape(n_heads * head_dim, *value.shape[2:])
        state[key] = value
    new_cfg = copy.deepcopy(cfg)
    new_cfg.num_key_value_heads = n_heads
    from transformers.initialization import no_init_weights

    with no_init_weights():
        new = type(hf)(new_cfg)
    try:
        new.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(
            f"cannot ungroup the grouped-query attention of {type(hf).__name__} (its k/v projections "
            f"are not named k_proj/v_proj): {str(e).splitlines()[0]}"
        ) from None
    return new.to(next(hf.parameters()).dtype).eval(), n_kv


def read(bridge, n_kv_heads: int) -> Architecture:
    cfg = bridge.cfg
    cap = getattr(cfg, "output_logits_soft_cap", -1.0)
    return Architecture(
        name=str(getattr(cfg, "architecture", "?")),
        norm="RMS" if str(cfg.normalization_type).startswith("RMS") else "LN",
        parallel=bool(getattr(cfg, "parallel_attn_mlp", False)),
        positional=str(cfg.positional_embedding_type),
        n_kv_heads=n_kv_heads,
        softcap=float(cap) if cap and cap > 0 else None,
        post_norms=tuple(post_norm_names(bridge)),
    )


def refusal(bridge, name: str) -> str | None:
    """Why the edge identities of DEFINITIONS.md, Patching an edge cannot hold on this model, or None when they do."""
    arch = getattr(bridge.cfg, "architecture", "?")
    for method in ("set_use_attn_result", "set_use_split_qkv_input", "set_use_hook_mlp_in"):
        try:
            getattr(bridge, method)(True)
        except NotImplementedError:
            return (
                f"model {name} ({arch}) is not supported: TransformerBridge has no per-head "
                f"{'attention results' if method == 'set_use_attn_result' else 'q/k/v inputs'} for this "
                f"architecture ({method} is not implemented), so single heads' edges cannot be patched"
            )
    if getattr(bridge.cfg, "normalization_type", None) not in ("LN", "LNPre", "RMS", "RMSPre"):
        return (
            f"model {name} ({arch}) is not supported: normalization {bridge.cfg.normalization_type!r} is "
            "neither LayerNorm nor RMSNorm"
        )
    return None


def check(bridge, name: str) -> None:
    """Raise the one-line refusal for an architecture the identities do not hold for."""
    why = refusal(bridge, name)
    if why:
        raise UserError(why)


def apply_softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    return logits if cap is None else cap * torch.tanh(logits / cap)
