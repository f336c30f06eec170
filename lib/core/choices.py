"""The values each option accepts, importable without torch: scripts check their options against these before
any heavy import (--help and option errors answer at once); the modules that implement them import them here."""

from __future__ import annotations

import re
from pathlib import Path

from lib.core.errors import UserError, user_path

ABLATIONS = ("resample", "mean", "zero")  # lib.core.patching
EAP_METHODS = ("eap", "eap-ig", "eap-ig-activations", "clean-corrupted")  # lib.methods.eap
IG_POINTS = ("right", "left")
IG_STEPS = 5  # default integration steps of EAP-IG
ACDC_METRICS = ("kl", "task")  # lib.methods.acdc
NODE_PATCH_DIRECTIONS = ("denoise", "noise")  # lib.methods.node_patching
PATH_DIRECTIONS = ("noise", "denoise")  # lib.methods.path_patching
PATHS = ("direct", "through-mlps")
HYPOTHESES = ("auto", "canonical", "answer-feature", "whole-prompt")  # lib.methods.hypotheses
FEATURE_METHODS = ("attrib", "ig")  # lib.features.effects
FEATURE_PATCHES = ("corrupted", "zero")
FEATURE_AGGREGATIONS = ("sum", "none")  # lib.features.circuit
FEATURE_ABLATIONS = ("mean", "resample", "zero")  # lib.features.ablate
GRAPH_TRANSCODERS = ("plt", "clt")  # lib.features.transcoders: per-layer or cross-layer
# circuit-tracer's transcoder names (its utils/hf_utils.py load_transcoder_from_hub) -> hub repositories
CIRCUIT_TRACER_SETS = {"gemma": "mwhanna/gemma-scope-transcoders", "llama": "mntss/transcoder-Llama-3.2-1B"}


def is_set_name(value: str) -> bool:
    """Whether a value names a dictionary set rather than an option word: circuit-tracer's names, a hub repo id
    (owner/name), or a path that exists."""
    if value in CIRCUIT_TRACER_SETS or ("/" in value and _HUB_ID.fullmatch(value)):
        return True
    try:
        return Path(value).expanduser().exists()
    except (OSError, RuntimeError):  # a ~user that names no user
        return False


DTYPES = ("float32", "float16", "bfloat16", "float64")  # lib.core.model
BUILTIN_MODELS = (
    "toy",
    "toy-seed1",
    "toy-rerun",
    "gpt2-random",
    "pythia-160m-random",
)  # lib.core.model; gpt2 from the hub
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
# the shipped toy models: toy; its twin from training seed 1; toy's recipe rerun with seed 0 by today's code, whose
# checkpoints along training are shipped (<name>@step<N>)
SHIPPED_MODELS = ("toy", "toy-seed1", "toy-rerun")
CHECKPOINT = re.compile(r"(.+)@step(\d+)")


def shipped_model_dir(name: str) -> Path | None:
    """The folder of a shipped toy model name (toy, toy-seed1, toy-rerun, toy-rerun@step<N>), None for any other
    name; a checkpoint that was not shipped is one line naming those that were."""
    if name in SHIPPED_MODELS:
        return MODELS_DIR / name
    step = CHECKPOINT.fullmatch(name)
    if step is None or step[1] not in SHIPPED_MODELS:
        return None
    model, n = step[1], int(step[2])
    folder = MODELS_DIR / model / "checkpoints" / f"step{n}"
    if not folder.is_dir():
        shipped = sorted((MODELS_DIR / model / "checkpoints").glob("step*"), key=lambda p: int(p.name[4:]))
        raise UserError(
            f"--model {name}: {model} has no checkpoint at step {n}; shipped: "
            + (", ".join(f"{model}@{p.name}" for p in shipped) or "none")
        )
    return folder


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")


def check_device_name(device: str) -> None:
    """The name only (availability is checked where the model loads: a SLURM login node has no GPU)."""
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")


def check_dtype_name(dtype: str) -> None:
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")


def check_model_name(name: str) -> None:
    """Refuse, before anything loads, a --model that is neither a built-in name, a local model directory nor a
    well-formed hub repo id (owner/name)."""
    if name in BUILTIN_MODELS or shipped_model_dir(name) is not None:
        return
    try:
        path = user_path(name, "--model")
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError) as e:
        raise UserError(f"--model {name!r} is not a usable name or path ({e})") from None
    if exists and not is_dir:
        raise UserError(
            f"--model {name}: is a file; a local model is a directory in Hugging Face format "
            "(config.json, weights, tokenizer files)"
        )
    if exists:
        return
    if name.startswith(("/", "./", "../", "~")) or name in (".", ".."):
        raise UserError(f"--model {name}: no such local directory")
    if not _HUB_ID.fullmatch(name) or "--" in name or ".." in name or name.endswith((".", "-")):
        close = [m for m in ("gpt2", *BUILTIN_MODELS) if m == name.strip()]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(
            f"--model {name!r} is neither a built-in model ({', '.join(('gpt2', *BUILTIN_MODELS))}), "
            f"a local directory nor a hub name of the form owner/name{hint}"
        )
