"""The transcoders of a replacement model, per-layer (PLT) or cross-layer (CLT), behind one interface: layer l's
features read the transcoder input at hooks_in[l] and write the MLP outputs of layers l .. l + n_out(l) - 1
(PLT: n_out = 1; CLT: every later layer, as circuit-tracer's cross_layer_transcoder.py defines it):

    f_l      = act(x_l @ W_enc[l] + b_enc[l])                                    [..., d_sae]
    out_j    = sum_{l <= j} f_l @ W_dec[l][:, j - l] + b_dec[j]                  [..., d_out]

CLT files use circuit-tracer's layout (cross_layer_transcoder.py to_safetensors / _load_state_dict):
W_enc_{l}.safetensors holds W_enc_{l} [d_sae, d_in], b_enc_{l}, b_dec_{l} (and threshold_{l} for JumpReLU);
W_dec_{l}.safetensors holds W_dec_{l} [d_sae, L - l, d_out]. Our cfg.json beside them names the hooks (as
templates with {layer}), the activation (topk with k, relu, or jumprelu) and the model; a folder without it is
read as circuit-tracer reads one (hook_resid_mid -> hook_mlp_out; JumpReLU when thresholds are present)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lib.core.errors import UserError

CLT_CONFIG = "cfg.json"
CIRCUIT_TRACER_HOOKS = ("blocks.{layer}.hook_resid_mid", "blocks.{layer}.hook_mlp_out")  # load_clt's defaults


@dataclass
class TranscoderSet:
    """One transcoder per layer (kind plt) or one cross-layer transcoder (kind clt), as tensors per layer."""

    kind: str  # "plt" | "clt"
    name: str  # the set's name (the CLT's folder, or the PLT folders joined)
    hooks_in: list  # [L] hook names the features read
    hooks_out: list  # [L] hook names written (the MLP outputs)
    W_enc: list  # [L] x [d_in, d_sae]
    b_enc: list  # [L] x [d_sae]
    W_dec: list  # [L] x [d_sae, n_out, d_out]
    b_dec: torch.Tensor  # [L, d_out]
    architecture: str = "topk"  # topk | standard (ReLU) | jumprelu
    k: int | None = None
    threshold: list | None = None  # [L] x [d_sae] (jumprelu)
    cfg: dict = field(default_factory=dict)
    W_skip: list | None = None  # [L] x [d_in, d_out]: a linear skip connection, x @ W_skip (circuit-tracer's W_skip.T)

    @property
    def n_layers(self) -> int:
        return len(self.W_enc)

    @property
    def d_sae(self) -> int:
        return self.W_enc[0].shape[1]

    def n_out(self, layer: int) -> int:
        return self.W_dec[layer].shape[1]

    def pre(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations [..., d_sae] of layer's features on its input x [..., d_in]."""
        return x.to(self.W_enc[layer].dtype) @ self.W_enc[layer] + self.b_enc[layer]

    def activate(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        if self.architecture == "topk":
            assert self.k is not None  # checked at load
            top = torch.topk(pre, self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        if self.architecture == "jumprelu":
            assert self.threshold is not None  # checked at load
            return pre * (pre > self.threshold[layer])
        return torch.relu(pre)

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.activate(layer, self.pre(layer, x))

    def write(self, layer: int, features: dict, x: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction [..., d_out] of layer's MLP output from features {source layer: [..., d_sae]}
        (source layers <= layer; a PLT uses only its own), plus the skip connection of layer's input x."""
        out = self.b_dec[layer]
        for source, f in features.items():
            if source <= layer < source + self.n_out(source):
                out = out + f.to(self.W_dec[source].dtype) @ self.W_dec[source][:, layer - source]
        if self.W_skip is not None:
            assert x is not None, "a transcoder with a skip connection writes from its input too"
            out = out + self.skip(layer, x)
        return out

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The skip connection's part of layer's output [..., d_out] (a linear path, kept in attribution)."""
        assert self.W_skip is not None
        return x.to(self.W_skip[layer].dtype) @ self.W_skip[layer]

    def to(self, device=None, dtype=None) -> TranscoderSet:
        move = lambda ts: [t.to(device=device, dtype=dtype) for t in ts]  # noqa: E731
        return TranscoderSet(
            self.kind,
            self.name,
            self.hooks_in,
            self.hooks_out,
            move(self.W_enc),
            move(self.b_enc),
            move(self.W_dec),
            self.b_dec.to(device=device, dtype=dtype),
            self.architecture,
            self.k,
            None if self.threshold is None else move(self.threshold),
            dict(self.cfg),
            None if self.W_skip is None else move(self.W_skip),
        )


def from_dictionaries(dictionaries: dict, n_layers: int, where: str) -> TranscoderSet:
    """The per-layer transcoders of a part-1 set (lib.features.files): one writing blocks.l.hook_mlp_out for every
    layer l, else one line naming the layers covered."""
    import re

    by_layer = {}
    for name, d in dictionaries.items():
        m = (
            re.fullmatch(r"blocks\.(\d+)\.(hook_mlp_out|mlp\.hook_out)", d.hook_name_out)
            if getattr(d, "kind", "") == "transcoder"
            else None
        )
        if m:
            by_layer.setdefault(int(m.group(1)), []).append(name)
    doubled = {l: n for l, n in by_layer.items() if len(n) > 1}
    if doubled:
        l, names = min(doubled.items())
        raise UserError(
            f"--dictionaries {where}: layer {l} has {len(names)} transcoders ({', '.join(names)}); "
            "a replacement model takes one per layer"
        )
    if sorted(by_layer) != list(range(n_layers)):
        covered = ", ".join(map(str, sorted(by_layer))) or "none"
        raise UserError(
            f"--dictionaries {where}: per-layer transcoders cover layers {covered} of {n_layers}; "
            "an attribution graph replaces every MLP (one transcoder writing blocks.l.hook_mlp_out per layer)"
        )
    ds = [dictionaries[by_layer[l][0]] for l in range(n_layers)]
    archs = {d.architecture for d in ds}
    if len(archs) > 1 or len({d.k for d in ds}) > 1 or len({d.W_skip is None for d in ds}) > 1:
        raise UserError(
            f"--dictionaries {where}: the per-layer transcoders mix architectures {sorted(archs)} (or skip connections)"
        )
    return TranscoderSet(
        "plt",
        "+".join(by_layer[l][0] for l in range(n_layers)),
        [d.hook_name for d in ds],
        [d.hook_name_out for d in ds],
        [d.W_enc for d in ds],
        [d.b_enc for d in ds],
        [d.W_dec[:, None] for d in ds],
        torch.stack([d.b_dec for d in ds]),
        ds[0].architecture,
        ds[0].k,
        # SAELens's JumpReLU is ReLU(pre)·(pre > t), ours (circuit-tracer's) pre·(pre > t): equal with t at least 0
        [d.threshold.clamp_min(0) for d in ds] if ds[0].architecture == "jumprelu" else None,
        {},
        None if ds[0].W_skip is None else [d.W_skip.T.contiguous() for d in ds],
    )


def is_clt(folder: Path) -> bool:
    """A cross-layer transcoder folder: circuit-tracer's W_enc_0.safetensors inside."""
    return (Path(folder) / "W_enc_0.safetensors").is_file()


def read_clt(folder: Path, hooks: tuple | None = None) -> TranscoderSet:
    """A CLT folder in circuit-tracer's layout (with or without our cfg.json; hooks: (in, out) templates from
    circuit-tracer's config.yaml); one line for what does not fit."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = {}
    if (folder / CLT_CONFIG).is_file():
        try:
            cfg = json.loads((folder / CLT_CONFIG).read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(
                f"transcoder {folder}: {CLT_CONFIG} is not readable JSON ({' '.join(str(e).split())})"
            ) from None
    if not isinstance(cfg, dict):
        raise UserError(f"transcoder {folder}: {CLT_CONFIG} is not a JSON object")
    n_layers = 0
    while (folder / f"W_enc_{n_layers}.safetensors").is_file():
        n_layers += 1
    if n_layers == 0:
        raise UserError(f"transcoder {folder}: no W_enc_0.safetensors (circuit-tracer's CLT layout)")
    missing = [f"W_dec_{l}.safetensors" for l in range(n_layers) if not (folder / f"W_dec_{l}.safetensors").is_file()]
    if missing:
        raise UserError(
            f"transcoder {folder}: missing {missing[0]} (circuit-tracer's CLT layout has one per W_enc file)"
        )
    enc, dec = [], []
    try:
        for l in range(n_layers):
            enc.append(load_file(str(folder / f"W_enc_{l}.safetensors")))
            dec.append(load_file(str(folder / f"W_dec_{l}.safetensors")))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"transcoder {folder}: unreadable safetensors ({' '.join(str(e).split())[:200]})") from None

    def tensor(group: dict, name: str, dims: int) -> torch.Tensor:
        if name not in group:
            raise UserError(f"transcoder {folder}: no tensor {name} (circuit-tracer's CLT layout)")
        t = group[name]
        if t.dim() != dims or not t.is_floating_point():
            raise UserError(
                f"transcoder {folder}: {name} is {t.dtype} of shape {tuple(t.shape)}; circuit-tracer's CLT layout "
                f"has {dims}-dimensional floating-point tensors there"
            )
        return t

    W_enc = [tensor(e, f"W_enc_{l}", 2).T.contiguous() for l, e in enumerate(enc)]
    b_enc = [tensor(e, f"b_enc_{l}", 1) for l, e in enumerate(enc)]
    b_decs = [tensor(e, f"b_dec_{l}", 1) for l, e in enumerate(enc)]
    if len({b.shape for b in b_decs}) != 1:
        raise UserError(
            f"transcoder {folder}: the b_dec_l tensors differ in shape ({[tuple(b.shape) for b in b_decs]})"
        )
    b_dec = torch.stack(b_decs)
    W_dec = [tensor(d, f"W_dec_{l}", 3) for l, d in enumerate(dec)]
    threshold = (
        [tensor(e, f"threshold_{l}", 1) for l, e in enumerate(enc)]
        if all(f"threshold_{l}" in e for l, e in enumerate(enc))
        else None
    )
    arch = cfg.get("architecture", "jumprelu" if threshold is not None else "standard")
    hook_in, hook_out = hooks or (
        cfg.get("hook_name", CIRCUIT_TRACER_HOOKS[0]),
        cfg.get("hook_name_out", CIRCUIT_TRACER_HOOKS[1]),
    )
    try:
        hooks_in = [hook_in.format(layer=l) for l in range(n_layers)]
        hooks_out = [hook_out.format(layer=l) for l in range(n_layers)]
    except (AttributeError, KeyError, ValueError, IndexError):
        raise UserError(
            f"transcoder {folder}: {CLT_CONFIG}'s hook_name and hook_name_out must be hook names with {{layer}} "
            f"(got {hook_in!r}, {hook_out!r})"
        ) from None
    tc = TranscoderSet(
        "clt",
        folder.name,
        hooks_in,
        hooks_out,
        W_enc,
        b_enc,
        W_dec,
        b_dec,
        arch,
        cfg.get("k"),
        threshold,
        cfg,
    )
    check(tc, str(folder))
    return tc


def check(tc: TranscoderSet, where: str) -> None:
    """Shapes and activation agree; one UserError line otherwise."""
    L = tc.n_layers
    if L == 0:
        raise UserError(f"transcoder {where}: no layers")
    if tc.architecture not in ("topk", "standard", "jumprelu"):
        raise UserError(
            f"transcoder {where}: architecture {tc.architecture!r} is not supported (topk, standard, jumprelu)"
        )
    if tc.architecture == "topk" and not (type(tc.k) is int and 0 < tc.k <= tc.d_sae):
        raise UserError(f"transcoder {where}: a topk transcoder needs an integer k in 1..d_sae (got {tc.k!r})")
    if tc.architecture == "jumprelu" and tc.threshold is None:
        raise UserError(f"transcoder {where}: jumprelu needs threshold_l tensors")
    d_in, d_sae, d_out = tc.W_enc[0].shape[0], tc.d_sae, tc.b_dec.shape[1]
    for l in range(L):
        want = {
            "W_enc": (tc.W_enc[l], (d_in, d_sae)),
            "b_enc": (tc.b_enc[l], (d_sae,)),
            "W_dec": (tc.W_dec[l], (d_sae, (L - l) if tc.kind == "clt" else 1, d_out)),
        }
        if tc.W_skip is not None:
            want["W_skip"] = (tc.W_skip[l], (d_in, d_out))
        if tc.threshold is not None:
            want["threshold"] = (tc.threshold[l], (d_sae,))
        for name, (t, shape) in want.items():
            if tuple(t.shape) != shape:
                raise UserError(f"transcoder {where}: layer {l}'s {name} has shape {tuple(t.shape)}, expected {shape}")


def write_clt(folder: Path, tc: TranscoderSet) -> None:
    """circuit-tracer's CLT layout plus cfg.json (hooks as {layer} templates, activation, model)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for l in range(tc.n_layers):
        tensors = {
            f"W_enc_{l}": tc.W_enc[l].T.contiguous(),
            f"b_enc_{l}": tc.b_enc[l].contiguous(),
            f"b_dec_{l}": tc.b_dec[l].contiguous(),
        }
        if tc.threshold is not None:
            tensors[f"threshold_{l}"] = tc.threshold[l].contiguous()
        save_file(tensors, str(folder / f"W_enc_{l}.safetensors"))
        save_file({f"W_dec_{l}": tc.W_dec[l].contiguous()}, str(folder / f"W_dec_{l}.safetensors"))
    cfg = {
        **tc.cfg,
        "transcoder_type": "clt",
        "architecture": tc.architecture,
        "k": tc.k,
        "n_layers": tc.n_layers,
        "d_in": tc.W_enc[0].shape[0],
        "d_sae": tc.d_sae,
        "d_out": tc.b_dec.shape[1],
        "dtype": str(tc.b_dec.dtype).removeprefix("torch."),
        "hook_name": hook_template(tc.hooks_in),
        "hook_name_out": hook_template(tc.hooks_out),
    }
    (folder / CLT_CONFIG).write_text(json.dumps(cfg, indent=1, sort_keys=True) + "\n")


def hook_template(hooks: list) -> str:
    """The hook names of every layer as one {layer} template (blocks.0.x -> blocks.{layer}.x)."""
    template = hooks[0].replace("blocks.0.", "blocks.{layer}.")
    assert all(template.format(layer=l) == h for l, h in enumerate(hooks)), hooks
    return template


def check_against(tc: TranscoderSet, model, where: str) -> None:
    """The hooks exist in the model, widths fit, and the set covers its layers: one line otherwise."""
    from lib.core.forward import capture

    if tc.n_layers != model.n_layers:
        raise UserError(f"transcoder {where} has {tc.n_layers} layers, model {model.name} has {model.n_layers}")
    if tc.cfg.get("model_name") not in (None, "", model.name):
        raise UserError(f"transcoder {where} was trained on {tc.cfg['model_name']!r}, not {model.name!r}")
    from lib.core.post_norm import check_readable

    hooks = set(model.bridge.hook_dict)
    for h in tc.hooks_in + tc.hooks_out:
        if h not in hooks:
            raise UserError(f"transcoder {where}: the model has no hook {h} (a transcoder of another model?)")
    check_readable(model, tc.hooks_in + tc.hooks_out, f"transcoder {where}")
    probe = torch.tensor([[model.tokenizer.bos_token_id or 0]])
    widths = {h: x.shape[-1] for h, x in capture(model, probe, sorted(set(tc.hooks_in + tc.hooks_out))).items()}
    d_in, d_out = tc.W_enc[0].shape[0], tc.b_dec.shape[1]
    for h in tc.hooks_in:
        if widths[h] != d_in:
            raise UserError(f"transcoder {where}: d_in is {d_in}, but {h} is {widths[h]} wide in model {model.name}")
    for h in tc.hooks_out:
        if widths[h] != d_out:
            raise UserError(f"transcoder {where}: d_out is {d_out}, but {h} is {widths[h]} wide in model {model.name}")
