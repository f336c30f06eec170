"""A sparse dictionary (DEFINITIONS.md, Features): an SAE (reads and writes one hook's activation) or a transcoder (reads the
MLP's input, writes its output), with SAELens's encoder and decoder math (sae_lens/saes/standard_sae.py,
topk_sae.py, transcoder.py; SAE.process_sae_in):

    sae_in  = x - b_dec            (SAEs with apply_b_dec_to_input; a transcoder never subtracts: b_dec is d_out)
    pre     = sae_in @ W_enc + b_enc                                  [..., d_sae]
    f       = ReLU(pre)                                    (architecture "standard", activation relu)
            | ReLU of the k largest entries of pre, 0 elsewhere        (architecture "topk", TopK(k))
            | ReLU(pre) * (pre > threshold)                 ("jumprelu", jumprelu_sae.py; its `threshold` tensor)
    x_hat   = f @ W_dec + b_dec (+ x @ W_skip.T)                      [..., d_out]

SAELens's transcoder architectures (transcoder.py) are read as the same math: transcoder (ReLU), skip_transcoder
(ReLU and the skip connection W_skip [d_out, d_in]), jumprelu_transcoder, jumprelu_skip_transcoder.
    error   = x_target - x_hat, so x_target = x_hat + error exactly (the error node of every site).

Only `normalize_activations = "none"` is supported (others rescale by statistics not in the file)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lib.core.errors import UserError

ARCHITECTURES = ("standard", "topk", "jumprelu")  # SAELens's names: standard = ReLU
TRANSCODER_ARCHITECTURES = {  # SAELens's transcoder names -> (activation, skip connection)
    "transcoder": ("standard", False),
    "skip_transcoder": ("standard", True),
    "jumprelu_transcoder": ("jumprelu", False),
    "jumprelu_skip_transcoder": ("jumprelu", True),
}
KINDS = ("sae", "transcoder")


@dataclass
class Dictionary:
    """One dictionary: its SAELens config (cfg.json) and four tensors."""

    cfg: dict
    W_enc: torch.Tensor  # [d_in, d_sae]
    W_dec: torch.Tensor  # [d_sae, d_out]
    b_enc: torch.Tensor  # [d_sae]
    b_dec: torch.Tensor  # [d_out]
    threshold: torch.Tensor | None = None  # [d_sae] (jumprelu)
    W_skip: torch.Tensor | None = None  # [d_out, d_in] (skip transcoders: output += x @ W_skip.T)

    @property
    def kind(self) -> str:
        return "transcoder" if self.cfg.get("hook_name_out") else "sae"

    @property
    def architecture(self) -> str:
        """The activation: standard (ReLU), topk, jumprelu (SAELens's transcoder names mapped onto these)."""
        arch = self.cfg.get("architecture", "standard")
        return TRANSCODER_ARCHITECTURES[arch][0] if isinstance(arch, str) and arch in TRANSCODER_ARCHITECTURES else arch

    @property
    def has_skip(self) -> bool:
        """Whether the config's architecture is one of SAELens's skip transcoders."""
        arch = self.cfg.get("architecture")
        return isinstance(arch, str) and TRANSCODER_ARCHITECTURES.get(arch, ("", False))[1]

    @property
    def k(self) -> int | None:
        return self.cfg.get("k")

    @property
    def hook_name(self) -> str:
        return self.cfg["hook_name"]

    @property
    def hook_name_out(self) -> str:
        """Where the reconstruction is written: the input hook for an SAE, hook_name_out for a transcoder."""
        return self.cfg.get("hook_name_out") or self.cfg["hook_name"]

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def d_out(self) -> int:
        return self.W_dec.shape[1]

    def check(self, where: str) -> None:
        """The tensors and the config agree (shapes, architecture, k); one UserError line otherwise."""
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold", "W_skip"):
            tensor = getattr(self, name)
            if tensor is not None and not tensor.is_floating_point():
                raise UserError(f"dictionary {where}: {name} holds {tensor.dtype}, not floating-point numbers")
        if self.W_enc.dim() != 2 or self.W_dec.dim() != 2 or 0 in (*self.W_enc.shape, *self.W_dec.shape):
            raise UserError(
                f"dictionary {where}: W_enc {tuple(self.W_enc.shape)} and W_dec {tuple(self.W_dec.shape)} must be "
                "non-empty matrices"
            )
        if self.architecture not in ARCHITECTURES:
            raise UserError(
                f"dictionary {where}: architecture {self.architecture!r} is not supported "
                f"({', '.join((*ARCHITECTURES, *TRANSCODER_ARCHITECTURES))})"
            )
        if self.architecture == "jumprelu" and self.threshold is None:
            raise UserError(f"dictionary {where}: a jumprelu dictionary needs its threshold tensor")
        if (self.W_skip is not None) != self.has_skip:
            raise UserError(
                f"dictionary {where}: architecture {self.cfg.get('architecture')!r} "
                + ("has no W_skip tensor" if self.W_skip is None else "has a W_skip tensor it does not use")
            )
        if self.architecture == "topk" and not (type(self.k) is int and 0 < self.k <= self.d_sae):
            raise UserError(f"dictionary {where}: a topk dictionary needs an integer k in 1..d_sae (got {self.k!r})")
        norm = self.cfg.get("normalize_activations", "none") or "none"
        if norm != "none":
            raise UserError(f"dictionary {where}: normalize_activations {norm!r} is not supported (only none)")
        shapes = {
            "W_enc": (self.d_in, self.d_sae),
            "W_dec": (self.d_sae, self.d_out),
            "b_enc": (self.d_sae,),
            "b_dec": (self.d_out,),
        }
        if self.threshold is not None:
            shapes["threshold"] = (self.d_sae,)
        if self.W_skip is not None:
            shapes["W_skip"] = (self.d_out, self.d_in)
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise UserError(
                    f"dictionary {where}: {name} has shape {tuple(getattr(self, name).shape)}, expected {shape}"
                )
        declared = {"d_in": self.d_in, "d_sae": self.d_sae, "d_out": self.d_out}
        for key, value in declared.items():
            if key in self.cfg and self.cfg[key] != value:
                raise UserError(f"dictionary {where}: cfg.json says {key} = {self.cfg[key]}, its weights have {value}")
        if self.kind == "sae" and self.d_in != self.d_out:
            raise UserError(
                f"dictionary {where}: an SAE reads and writes one activation, but d_in {self.d_in} != "
                f"d_out {self.d_out} (a transcoder names hook_name_out)"
            )

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations [..., d_sae] of the input activation x [..., d_in]."""
        subtract = self.kind == "sae" and self.cfg.get("apply_b_dec_to_input", True)
        sae_in = x.to(self.W_enc.dtype) - self.b_dec if subtract else x.to(self.W_enc.dtype)
        return sae_in @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.architecture == "identity":  # the neuron baseline (identity_dictionary): features = coordinates
            return pre
        if self.architecture == "topk":
            assert self.k is not None  # checked at load
            top = torch.topk(pre, self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        if self.architecture == "jumprelu":
            assert self.threshold is not None  # checked at load
            return torch.relu(pre) * (pre > self.threshold)
        return torch.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [..., d_sae]."""
        return self.activate(self.pre(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction [..., d_out] of feature activations f [..., d_sae] (a skip transcoder's skip part is
        not in it: lib.features.transcoders keeps it as the linear path it is)."""
        return f @ self.W_dec + self.b_dec

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """A skip transcoder's linear part of the output [..., d_out], from its input x."""
        assert self.W_skip is not None, "only a skip transcoder has a skip connection"
        return x.to(self.W_skip.dtype) @ self.W_skip.T

    def reconstruct(self, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The whole output [..., d_out] from features f and the input x they were read from: decode(f), plus the
        skip connection of a skip transcoder."""
        return self.decode(f) if self.W_skip is None else self.decode(f) + self.skip(x)

    def to(self, device=None, dtype=None) -> Dictionary:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype)

        return Dictionary(
            dict(self.cfg),
            move(self.W_enc),
            move(self.W_dec),
            move(self.b_enc),
            move(self.b_dec),
            None if self.threshold is None else move(self.threshold),
            None if self.W_skip is None else move(self.W_skip),
        )


def identity_dictionary(like: Dictionary) -> Dictionary:
    """The neuron baseline at like's site (Marks et al.'s IdentityDict): W_enc = W_dec = I, no bias, no
    nonlinearity, so its features are the activation's coordinates and its error node is always 0."""
    d = like.d_out
    cfg = {k: v for k, v in like.cfg.items() if k in ("hook_name", "hook_name_out", "model_name")}
    if like.kind == "transcoder":  # the neurons of the output it writes
        cfg["hook_name"] = cfg.pop("hook_name_out")
    eye = torch.eye(d, dtype=like.W_dec.dtype, device=like.W_dec.device)
    zeros = torch.zeros(d, dtype=like.W_dec.dtype, device=like.W_dec.device)
    return Dictionary(
        {**cfg, "architecture": "identity", "apply_b_dec_to_input": False}, eye, eye.clone(), zeros, zeros.clone()
    )
