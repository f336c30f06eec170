"""Dictionary files in SAELens's layout (DEFINITIONS.md, Features): a folder with cfg.json and sae_weights.safetensors
(W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_enc, b_dec), read with safetensors directly (no sae_lens import);
a set is a folder of such folders. cfg.json carries the fields flat (as SAELens 5 wrote them) and under
`metadata` (as SAELens 6 does); reading takes either."""

from __future__ import annotations

import json
from pathlib import Path

from lib.core.errors import UserError, user_path

WEIGHTS, CONFIG = "sae_weights.safetensors", "cfg.json"
TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec")
DTYPES = {
    "float32": "float32",
    "torch.float32": "float32",
    "float64": "float64",
    "torch.float64": "float64",
    "float16": "float16",
    "torch.float16": "float16",
    "bfloat16": "bfloat16",
    "torch.bfloat16": "bfloat16",
}
METADATA = ("model_name", "hook_name", "hook_name_out", "hook_head_index", "prepend_bos")


def read_config(folder: Path) -> dict:
    """cfg.json with SAELens 6's metadata fields lifted to the top level (flat fields win)."""
    try:
        cfg = json.loads((folder / CONFIG).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise UserError(f"dictionary {folder} has no {CONFIG}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"dictionary {folder}: {CONFIG} is not readable JSON ({' '.join(str(e).split())})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"dictionary {folder}: {CONFIG} is not a JSON object")
    metadata = cfg.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise UserError(f"dictionary {folder}: {CONFIG}'s metadata is not a JSON object")
    cfg = {**metadata, **{k: v for k, v in cfg.items() if k != "metadata"}}
    if not isinstance(cfg.get("hook_name"), str):
        raise UserError(f"dictionary {folder}: {CONFIG} names no hook_name")
    if str(cfg.get("dtype", "float32")) not in DTYPES:
        raise UserError(f"dictionary {folder}: unknown dtype {cfg.get('dtype')!r}")
    return cfg


def read(folder: Path):
    """One dictionary folder -> lib.features.dictionary.Dictionary (checked)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lib.features.dictionary import Dictionary

    folder = Path(folder)
    cfg = read_config(folder)
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except FileNotFoundError:
        raise UserError(f"dictionary {folder} has no {WEIGHTS}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(
            f"dictionary {folder}: {WEIGHTS} is not a readable safetensors file ({' '.join(str(e).split())[:200]})"
        ) from None
    missing = [n for n in TENSORS if n not in tensors]
    if missing:
        raise UserError(f"dictionary {folder}: {WEIGHTS} has no {', '.join(missing)}")
    dictionary = Dictionary(
        cfg,
        tensors["W_enc"],
        tensors["W_dec"],
        tensors["b_enc"],
        tensors["b_dec"],
        threshold=tensors.get("threshold"),
        W_skip=tensors.get("W_skip"),
    )
    dictionary.check(str(folder))
    return dictionary


def write(folder: Path, dictionary) -> None:
    """SAELens's layout: cfg.json (flat fields and a `metadata` copy) and sae_weights.safetensors."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        **dictionary.cfg,
        "d_in": dictionary.d_in,
        "d_sae": dictionary.d_sae,
        "d_out": dictionary.d_out,
        "dtype": str(dictionary.W_enc.dtype).removeprefix("torch."),
        "normalize_activations": "none",
        "apply_b_dec_to_input": dictionary.kind == "sae" and dictionary.cfg.get("apply_b_dec_to_input", True),
    }
    cfg["metadata"] = {k: cfg[k] for k in METADATA if cfg.get(k) is not None}
    optional = [n for n in ("threshold", "W_skip") if getattr(dictionary, n) is not None]
    save_file({n: getattr(dictionary, n).contiguous() for n in (*TENSORS, *optional)}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(cfg, indent=1, sort_keys=True) + "\n")


def read_set(where: Path) -> dict:
    """A folder of dictionary folders (or one dictionary folder) -> {name: Dictionary, or TranscoderSet for a set
    in circuit-tracer's layouts (lib.features.published, lib.features.transcoders)}, in name order."""
    where = Path(where)
    one = _reader(where)
    if one is not None:
        return {where.name: one(where)}
    if not where.is_dir():
        raise UserError(f"dictionaries {where}: no such folder")
    folders = sorted(p for p in where.iterdir() if p.is_dir() and not p.name.startswith("."))
    readers = {p: _reader(p) for p in folders}
    for p, reader in readers.items():  # every folder of a set is a dictionary: one that is not is named, never skipped
        if reader is None:
            raise UserError(
                f"dictionaries {where}: folder {p.name} holds no {CONFIG} (each dictionary folder holds {CONFIG} and "
                f"{WEIGHTS}, or a transcoder set in circuit-tracer's layout: config.yaml, or its CLT files)"
            )
    if not folders:
        raise UserError(f"dictionaries {where}: no dictionary folders (each holds {CONFIG} and {WEIGHTS})")
    return {p.name: reader(p) for p, reader in readers.items() if reader is not None}


def _reader(folder: Path):
    """The reader of one dictionary folder by what it holds (circuit-tracer's config.yaml, its CLT layout, or
    SAELens's cfg.json), or None when it holds none of them."""
    from lib.features import published, transcoders

    if published.is_published(folder):
        return published.read
    if transcoders.is_clt(folder):
        return transcoders.read_clt
    return read if (folder / CONFIG).is_file() else None


def check_against(dictionaries: dict, model) -> None:
    """Before any work: each dictionary's hooks exist in the model, its widths are the activations' there, and
    the model it names (if any) is this one; one line naming the dictionary otherwise."""
    import torch

    from lib.core.forward import capture
    from lib.core.post_norm import check_readable
    from lib.features import transcoders

    for name, d in dictionaries.items():
        if isinstance(d, transcoders.TranscoderSet):
            transcoders.check_against(d, model, name)
    dictionaries = {n: d for n, d in dictionaries.items() if not isinstance(d, transcoders.TranscoderSet)}
    hooks = set(model.bridge.hook_dict)
    names = {h for d in dictionaries.values() for h in (d.hook_name, d.hook_name_out)}
    for name, d in dictionaries.items():
        for hook in (d.hook_name, d.hook_name_out):
            if hook not in hooks:
                raise UserError(f"dictionary {name}: the model has no hook {hook} (a dictionary of another model?)")
        if d.cfg.get("model_name") not in (None, "", model.name):
            raise UserError(f"dictionary {name} was trained on {d.cfg['model_name']!r}, not {model.name!r}")
        check_readable(model, [d.hook_name, d.hook_name_out], f"dictionary {name}")
    probe = torch.tensor([[model.tokenizer.bos_token_id or 0]])
    widths = {h: x.shape[-1] for h, x in capture(model, probe, sorted(names)).items()}
    for name, d in dictionaries.items():
        for what, hook, width in (("d_in", d.hook_name, d.d_in), ("d_out", d.hook_name_out, d.d_out)):
            if widths.get(hook) != width:
                raise UserError(
                    f"dictionary {name}: {what} is {width}, but {hook} is {widths.get(hook)} wide in model {model.name}"
                )


def resolve(spec: str) -> Path:
    """--dictionaries: `toy` (the set shipped with the toy model; toy-seed1, toy-rerun and its checkpoints likewise), circuit-tracer's names `gemma` and `llama`
    (its ReplacementModel.from_pretrained transcoder names), a local folder, or a Hugging Face repo id
    (downloaded through huggingface_hub; offline it is one line, as --model gpt2 is)."""
    from lib.core.choices import _HUB_ID, CIRCUIT_TRACER_SETS, shipped_model_dir
    from lib.features.published import CONFIG_YAML

    shipped = shipped_model_dir(spec)  # toy, toy-seed1, toy-rerun@step<N>: that model's set
    if shipped is not None:
        return shipped / "dictionaries"
    spec = CIRCUIT_TRACER_SETS.get(spec, spec)  # circuit-tracer's names: gemma, llama
    path = user_path(spec, "--dictionaries")
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--dictionaries {spec}: is a file; a dictionary set is a folder of dictionary folders")
        return path
    if spec.startswith(("/", "./", "../", "~")) or not _HUB_ID.fullmatch(spec):
        raise UserError(f"--dictionaries {spec!r}: no such folder (use toy, a local folder or a hub repo id)")
    from lib.core.model import hub_reachable

    if not hub_reachable():
        raise UserError(
            f"cannot download dictionaries {spec!r} from the Hugging Face hub (offline or unreachable); "
            "run offline with --dictionaries toy or a local folder (SAELens's or circuit-tracer's layout)"
        )
    try:
        from huggingface_hub import file_exists, snapshot_download

        if file_exists(spec, CONFIG_YAML):  # circuit-tracer's set: config.yaml names its files (hf:// ones on read)
            patterns = [CONFIG_YAML, "layer_*.safetensors", "W_enc_*.safetensors", "W_dec_*.safetensors"]
        else:
            patterns = [f"*{CONFIG}", f"*{WEIGHTS}"]
        return Path(snapshot_download(spec, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - any failure of the hub is one line
        raise UserError(
            f"cannot download dictionaries {spec!r} ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None


def processing_of(dictionaries: dict, where: str) -> dict:
    """The weight processing the set was trained on, which the model is loaded with: circuit-tracer's formats read
    the unprocessed model (its loaders turn fold_ln, center_writing_weights, center_unembed off); a SAELens
    dictionary the processing of its model_from_pretrained_kwargs (TransformerLens's defaults: all on); a set
    whose dictionaries disagree is one line."""
    from lib.core.model import PROCESSED, PROCESSING, UNPROCESSED
    from lib.features.transcoders import TranscoderSet

    seen: dict = {}
    for name, d in dictionaries.items():
        if isinstance(d, TranscoderSet):
            p = UNPROCESSED if d.cfg.get("activations") == "unprocessed" else PROCESSED
        else:
            kwargs = d.cfg.get("model_from_pretrained_kwargs") or {}
            kwargs = kwargs if isinstance(kwargs, dict) else {}
            p = {k: bool(kwargs.get(k, True)) for k in PROCESSING}
        seen.setdefault(tuple(sorted(p.items())), name)
    if len(seen) > 1:
        (a, first), (b, second) = list(seen.items())[:2]
        raise UserError(
            f"--dictionaries {where}: {first} and {second} were trained on differently processed activations "
            f"({dict(a)} vs {dict(b)}); a run loads the model one way"
        )
    return dict(next(iter(seen))) if seen else dict(PROCESSED)


def fit(dictionaries: dict, model) -> dict:
    """check_against, then on the model's device (CUDA)."""
    check_against(dictionaries, model)
    return {name: d.to(device=model.device) for name, d in dictionaries.items()}


def load_set(spec: str, model) -> dict:
    """resolve + read_set + check_against: the dictionaries a script uses, on the model's device, refused in one
    line if they do not fit."""
    return fit(read_set(resolve(spec)), model)
