"""Transcoder sets in the formats circuit-tracer publishes and reads (circuit_tracer/utils/hf_utils.py
load_transcoders, transcoder/single_layer_transcoder.py load_relu_transcoder and load_gemma_scope_transcoder,
transcoder/cross_layer_transcoder.py load_clt), read into lib.features.transcoders.TranscoderSet:

- config.yaml: model_kind (transcoder_set | cross_layer_transcoder), model_name, feature_input_hook and
  feature_output_hook (TransformerLens hook names below blocks.{layer}., e.g. ln2.hook_normalized, hook_mlp_out,
  mlp.hook_in), scan, and for a per-layer set the list `transcoders` of per-layer files in layer order (paths
  beside config.yaml or hf://repo/path@revision URIs); without the list, layer_{l}.safetensors.
- per-layer .safetensors: W_enc [d_sae, d_in], W_dec [d_sae, d_out], b_enc [d_sae], b_dec [d_out], optional
  W_skip [d_out, d_in] (output += x @ W_skip.T) and activation_function.threshold [d_sae] (JumpReLU: f = pre *
  (pre > threshold)); ReLU without it.
- GemmaScope .npz: W_enc [d_in, d_sae] (the other way round), W_dec, b_enc, b_dec, threshold (JumpReLU).
- a cross-layer set: circuit-tracer's CLT layout (lib.features.transcoders.read_clt) with config.yaml's hooks.

Every such set reads the model as circuit-tracer loads it: unprocessed (fold_ln, center_writing_weights,
center_unembed off), recorded in the set's cfg as `activations`. TopK has no encoding in these formats (and
circuit-tracer's TopK keeps negative top-k values where SAELens and this project apply ReLU): writing a TopK set
is refused in one line."""

from __future__ import annotations

from pathlib import Path

import torch

from lib.core.errors import UserError

CONFIG_YAML = "config.yaml"
KINDS = {"transcoder_set": "plt", "cross_layer_transcoder": "clt"}
THRESHOLD = "activation_function.threshold"


def is_published(folder: Path) -> bool:
    return (Path(folder) / CONFIG_YAML).is_file()


def read_yaml(folder: Path) -> dict:
    import yaml

    where = Path(folder) / CONFIG_YAML
    try:
        cfg = yaml.safe_load(where.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(
            f"transcoders {folder}: {CONFIG_YAML} is not readable YAML ({' '.join(str(e).split())[:200]})"
        ) from None
    if not isinstance(cfg, dict):
        raise UserError(f"transcoders {folder}: {CONFIG_YAML} is not a mapping")
    kind = cfg.get("model_kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise UserError(
            f"transcoders {folder}: {CONFIG_YAML} model_kind {kind!r} is not a format this reads "
            f"({', '.join(KINDS)}, as circuit-tracer's load_transcoders)"
        )
    for key in ("feature_input_hook", "feature_output_hook"):
        if not isinstance(cfg.get(key), str) or not cfg[key]:
            raise UserError(f"transcoders {folder}: {CONFIG_YAML} names no {key}")
    return cfg


def hook_template(hook: str) -> str:
    """circuit-tracer's per-block hook name (TransformerLens 3's, e.g. ln2.hook_normalized) as the bridge's
    template blocks.{layer}.<name>; the bridge keeps TransformerLens's names, so the rest is unchanged."""
    return hook if hook.startswith("blocks.") else "blocks.{layer}." + hook


def _layer_files(folder: Path, cfg: dict) -> list[Path]:
    listed = cfg.get("transcoders")
    if listed is None:
        files, l = [], 0
        while (folder / f"layer_{l}.safetensors").is_file():
            files.append(folder / f"layer_{l}.safetensors")
            l += 1
        if not files:
            raise UserError(
                f"transcoders {folder}: {CONFIG_YAML} lists no transcoders and no layer_0.safetensors is beside it"
            )
        return files
    if not isinstance(listed, list) or not listed or not all(isinstance(p, str) for p in listed):
        raise UserError(f"transcoders {folder}: {CONFIG_YAML}'s transcoders is not a list of file names")
    return [_local(folder, p) for p in listed]


def _local(folder: Path, path: str) -> Path:
    """A listed file: beside config.yaml, or an hf://repo/path@revision URI downloaded through huggingface_hub."""
    if not path.startswith("hf://"):
        where = (folder / path) if not Path(path).is_absolute() else Path(path)
        if not where.is_file():
            raise UserError(f"transcoders {folder}: listed file {path} does not exist")
        return where
    from lib.core.model import hub_reachable

    body, _, revision = path.removeprefix("hf://").partition("@")
    parts = body.split("/")
    if len(parts) < 3:
        raise UserError(f"transcoders {folder}: {path} is not an hf://owner/repo/file URI")
    if not hub_reachable():
        raise UserError(f"transcoders {folder}: cannot download {path} (the Hugging Face hub is unreachable)")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), revision=revision or None))
    except Exception as e:  # noqa: BLE001 - any failure of the hub is one line
        raise UserError(f"transcoders {folder}: cannot download {path} ({type(e).__name__})") from None


def _tensors(path: Path, folder: Path) -> dict:
    """One layer's tensors in circuit-tracer's orientation (W_enc [d_sae, d_in]); npz is GemmaScope's."""
    try:
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path) as z:
                raw = {k: torch.from_numpy(z[k].copy()) for k in z.files}
            if "W_enc" in raw:
                raw["W_enc"] = raw["W_enc"].T.contiguous()  # GemmaScope stores [d_in, d_sae]
            if "threshold" in raw:
                raw[THRESHOLD] = raw.pop("threshold")
            return raw
        from safetensors.torch import load_file

        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - an unreadable file is one line, whatever the library raised
        raise UserError(
            f"transcoders {folder}: {path.name} is unreadable ({type(e).__name__}: {str(e)[:150]})"
        ) from None


def read(folder: Path):
    """A folder with circuit-tracer's config.yaml -> TranscoderSet; one line for what does not fit."""
    from lib.features import transcoders

    folder = Path(folder)
    cfg = read_yaml(folder)
    hooks = hook_template(cfg["feature_input_hook"]), hook_template(cfg["feature_output_hook"])
    meta = {
        "format": f"circuit-tracer {cfg['model_kind']}",
        "model_name": cfg.get("model_name"),
        "scan": cfg.get("scan"),
        "activations": "unprocessed",
        "hook_name": hooks[0],
        "hook_name_out": hooks[1],
    }
    if KINDS[cfg["model_kind"]] == "clt":
        tc = transcoders.read_clt(folder, hooks=hooks)
        tc.cfg.update(meta)
        return tc
    layers = [_tensors(p, folder) for p in _layer_files(folder, cfg)]
    for l, t in enumerate(layers):
        missing = [n for n in ("W_enc", "W_dec", "b_enc", "b_dec") if n not in t]
        if missing:
            raise UserError(f"transcoders {folder}: layer {l} has no {', '.join(missing)}")
        if "log_thresholds" in t:  # load_relu_transcoder asserts the same
            raise UserError(
                f"transcoders {folder}: layer {l} stores log_thresholds, which circuit-tracer does not read"
            )
    if len({THRESHOLD in t for t in layers}) > 1 or len({"W_skip" in t for t in layers}) > 1:
        raise UserError(f"transcoders {folder}: the layers mix JumpReLU and ReLU, or skip connections and none")
    jump, skip = THRESHOLD in layers[0], "W_skip" in layers[0]
    tc = transcoders.TranscoderSet(
        "plt",
        folder.name,
        [hooks[0].format(layer=l) for l in range(len(layers))],
        [hooks[1].format(layer=l) for l in range(len(layers))],
        [t["W_enc"].T.contiguous() for t in layers],
        [t["b_enc"] for t in layers],
        [t["W_dec"][:, None] for t in layers],
        _stack([t["b_dec"] for t in layers], folder),
        "jumprelu" if jump else "standard",
        None,
        [t[THRESHOLD] for t in layers] if jump else None,
        meta,
        [t["W_skip"].T.contiguous() for t in layers] if skip else None,
    )
    transcoders.check(tc, str(folder))
    return tc


def _stack(tensors: list, folder: Path) -> torch.Tensor:
    if len({tuple(t.shape) for t in tensors}) != 1:
        raise UserError(f"transcoders {folder}: the layers' b_dec differ in shape")
    return torch.stack(tensors)


def write(folder: Path, tc, model_name: str | None = None) -> None:
    """A per-layer set in circuit-tracer's layout (layer_{l}.safetensors + config.yaml), as its
    SingleLayerTranscoder.to_safetensors writes it, so load_transcoder_set reads it unchanged."""
    import yaml
    from safetensors.torch import save_file

    if tc.kind != "plt":
        raise UserError(
            "only per-layer transcoders are written as a circuit-tracer transcoder_set (a CLT keeps its layout)"
        )
    if tc.architecture == "topk":
        raise UserError(
            "a TopK transcoder has no circuit-tracer encoding (its TopK keeps negative top-k values, where this "
            "project applies ReLU); its k stays in cfg.json of the SAELens layout"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for l in range(tc.n_layers):
        tensors = {
            "W_enc": tc.W_enc[l].T.contiguous(),
            "W_dec": tc.W_dec[l][:, 0].contiguous(),
            "b_enc": tc.b_enc[l].contiguous(),
            "b_dec": tc.b_dec[l].contiguous(),
        }
        if tc.threshold is not None:
            tensors[THRESHOLD] = tc.threshold[l].contiguous()
        if tc.W_skip is not None:
            tensors["W_skip"] = tc.W_skip[l].T.contiguous()
        save_file(tensors, str(folder / f"layer_{l}.safetensors"))
    names = [{h.removeprefix(f"blocks.{l}.") for l, h in enumerate(hooks)} for hooks in (tc.hooks_in, tc.hooks_out)]
    if any(len(n) != 1 for n in names):
        raise UserError("a circuit-tracer set reads and writes one hook name per block")
    cfg = {
        "model_name": model_name or tc.cfg.get("model_name") or "",
        "model_kind": "transcoder_set",
        "feature_input_hook": names[0].pop(),
        "feature_output_hook": names[1].pop(),
        "scan": tc.cfg.get("scan") or folder.name,
        "transcoders": [f"layer_{l}.safetensors" for l in range(tc.n_layers)],
    }
    (folder / CONFIG_YAML).write_text(yaml.safe_dump(cfg, sort_keys=False))
