"""Model loading (README, Models): TransformerBridge in compatibility mode with the hooks the graph needs."""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lib.core import architecture
from lib.core.architecture import Architecture
from lib.core.choices import (  # noqa: F401
    MODELS_DIR,
    SHIPPED_MODELS,
    check_device_name,
    check_dtype_name,
    check_model_name,
    shipped_model_dir,
)
from lib.core.errors import UserError, user_path
from lib.core.identity import check_identity
from lib.core.post_norm import split_attention_post_norms

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
# TransformerLens's load-time weight processing (HookedTransformer.from_pretrained's defaults: PROCESSED); a
# dictionary reads the activations of the processing it was trained on (lib.features.files.processing_of)
PROCESSING = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
PROCESSED = dict.fromkeys(PROCESSING, True)
UNPROCESSED = dict.fromkeys(PROCESSING, False)
OFFLINE_HINT = "run offline with --model toy (shipped, trained) or --model gpt2-random (random weights)"


@dataclass
class LoadedModel:
    """A bridge ready for circuit work, with the facts scripts record about it."""

    name: str
    bridge: TransformerBridge
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    source: str  # where the weights came from, for run.json
    arch: Architecture
    processing: dict = field(default_factory=lambda: dict(PROCESSED))  # the weight processing applied at load

    @property
    def n_layers(self) -> int:
        return self.bridge.cfg.n_layers

    @property
    def n_heads(self) -> int:
        return self.bridge.cfg.n_heads

    @property
    def d_model(self) -> int:
        return self.bridge.cfg.d_model

    @property
    def rows_per_pass(self) -> int:
        """Default rows (interventions x prompts) of one stacked forward pass: wide on a GPU; on CPU passes
        past ~32 rows run slower per row (memory-bound per-head tensors; benchmarks/bench_engine.py)."""
        return 256 if self.device.type == "cuda" else 32

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "d_model": self.d_model,
            "d_vocab": self.bridge.cfg.d_vocab,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "architecture": self.arch.describe(),
            "processing": dict(self.processing),
        }


def resolve_device(device: str) -> torch.device:
    check_device_name(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    check_dtype_name(dtype)
    return DTYPES[dtype]


def prepare(bridge, name: str, processing: dict) -> None:
    """HookedTransformer-equivalent numerics and the hooks of README, Models (or the architecture's one-line
    refusal); weights processed as `processing` says (PROCESSED, UNPROCESSED or between) and frozen."""
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=not any(processing.values()), **processing)
    architecture.check(bridge, name)  # also turns on per-head results, split q/k/v inputs and mlp_in
    split_attention_post_norms(bridge, name)  # Gemma 2: each head's share of the normalized attention output
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (so offline runs fail in seconds, not minutes)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        socket.create_connection((urlparse(constants.ENDPOINT).hostname, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def gpt2_tokenizer():
    """The real GPT-2 tokenizer: $GPT2_TOKENIZER_DIR if set, else the Hugging Face hub or cache."""
    from transformers import AutoTokenizer

    where = os.environ.get("GPT2_TOKENIZER_DIR") or "gpt2"
    try:
        local = where != "gpt2" or not hub_reachable()
        return AutoTokenizer.from_pretrained(where, local_files_only=local)
    except Exception as e:  # noqa: BLE001 - any failure here means "not available"
        raise UserError(
            f"the GPT-2 tokenizer is not available ({where}: {type(e).__name__}); set "
            "GPT2_TOKENIZER_DIR to a local copy of it, or run with --model toy"
        ) from None


def tokenizer_of(name: str):
    """The tokenizer a --model name loads with, without its weights (lib.tools.export_task)."""
    from transformers import AutoTokenizer

    check_model_name(name)
    if name in ("gpt2", "gpt2-random", "pythia-160m-random"):
        return gpt2_tokenizer()
    where = shipped_model_dir(name) or user_path(name, "--model")
    try:
        return AutoTokenizer.from_pretrained(
            str(where) if where.is_dir() else name, local_files_only=not where.is_dir() and not hub_reachable()
        )
    except Exception as e:  # noqa: BLE001 - any failure here means "not available"
        raise UserError(
            f"cannot load the tokenizer of {name!r} ({type(e).__name__}: {first_sentence(e)}); {OFFLINE_HINT}"
        ) from None


def _quiet(fn: Callable):
    """Run fn with the bridge's and transformers' chatter silenced (warnings, info logs, load bars)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            return fn()
        finally:
            logging.disable(level)


def bridge_from_hf(hf_model, tokenizer, name: str, device: torch.device, dtype: torch.dtype):
    """(bridge, n_kv_heads) of any Hugging Face causal LM module: grouped-query attention ungrouped, cast
    (float32 buffers such as rotary frequencies kept), moved, wrapped by TransformerBridge."""
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    from transformer_lens.utilities.multi_gpu import maybe_cast_floating_params

    hf_model, n_kv = architecture.ungroup_kv(hf_model)
    maybe_cast_floating_params(hf_model, dtype)
    hf_model = hf_model.to(device=device).eval()
    hf_model.config._attn_implementation = "eager"
    arch = type(hf_model).__name__
    try:
        bridge = build_bridge_from_module(
            hf_model, arch, hf_config=hf_model.config, tokenizer=tokenizer, model_name=name
        )
    except Exception as e:  # noqa: BLE001 - an architecture the bridge has no adapter for
        raise UserError(
            f"model {name} ({arch}) is not supported: TransformerBridge cannot wrap it "
            f"({type(e).__name__}: {first_sentence(e)})"
        ) from None
    return bridge, n_kv


def random_model(hf_class, config, seed: int = 0, random_biases: bool = False):
    """A Hugging Face model of any architecture with seeded random weights; random_biases also perturbs
    biases and norm weights away from their 0/1 defaults so that identities involving them are real."""
    torch.manual_seed(seed)
    hf = hf_class(config)
    if random_biases:
        with torch.no_grad():
            for pname, p in hf.named_parameters():
                if pname.endswith(".bias") or "norm" in pname or ".ln_" in pname:
                    p.add_(0.1 * torch.randn_like(p))
    return hf


def _random_gpt2_hf(tokenizer, seed: int, random_biases: bool = False, **config):
    """A GPT-2-architecture Hugging Face model with seeded random weights (GPT-2's initialiser)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return random_model(GPT2LMHeadModel, GPT2Config(vocab_size=len(tokenizer), **config), seed, random_biases)


def from_hf(
    hf_model,
    tokenizer,
    name: str = "random",
    device="cpu",
    dtype=torch.float32,
    source: str = "in memory",
    processing: dict | None = None,
) -> LoadedModel:
    """A LoadedModel of a Hugging Face module in memory (tests, benchmarks), prepared (or refused) like any other."""
    device = torch.device(device)
    bridge, n_kv = _quiet(lambda: bridge_from_hf(hf_model, tokenizer, name, device, dtype))
    return _finish(bridge, name, device, dtype, source, tokenizer, n_kv, processing)


def random_gpt2(
    tokenizer,
    seed: int = 0,
    name: str = "random",
    device="cpu",
    dtype=torch.float32,
    random_biases: bool = False,
    **config,
) -> LoadedModel:
    """A small random GPT-2-architecture model in memory (tests, benchmarks); config as in GPT2Config."""
    hf = _random_gpt2_hf(tokenizer, seed, random_biases, **config)
    return from_hf(hf, tokenizer, name, device, dtype, f"random {name}, seed {seed}")


def load_gpt2_random(device: torch.device, dtype: torch.dtype, seed: int):
    """GPT-2 small's exact shape, weights drawn from GPT-2's initialiser with a fixed seed."""
    tokenizer = gpt2_tokenizer()
    bridge, n_kv = bridge_from_hf(_random_gpt2_hf(tokenizer, seed), tokenizer, "gpt2-random", device, dtype)
    return bridge, f"random GPT-2 small, seed {seed}", n_kv


def load_hf(where: str, device: torch.device, dtype: torch.dtype, name: str, what: str):
    """(bridge, n_kv_heads) of a Hugging Face causal LM (local directory or hub name; `what` says which)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:  # the config first: a broken config.json is a config problem, whatever reads it next
        AutoConfig.from_pretrained(where)
    except Exception as e:  # noqa: BLE001
        raise UserError(
            f"cannot read the config (config.json) of {what}: {type(e).__name__}: {first_sentence(e)}"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot load the tokenizer of {what}: {type(e).__name__}: {first_sentence(e)}") from None
    try:
        hf = AutoModelForCausalLM.from_pretrained(where, attn_implementation="eager", torch_dtype=dtype)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e) or "AutoModelForCausalLM" in str(e):
            raise UserError(
                f"{what} is not a causal language model that transformers knows ({first_sentence(e)})"
            ) from None
        raise UserError(f"cannot load the weights of {what}: {type(e).__name__}: {first_sentence(e)}") from None
    except Exception as e:  # noqa: BLE001 - unreadable or missing weights
        raise UserError(f"cannot load the weights of {what}: {type(e).__name__}: {first_sentence(e)}") from None
    return bridge_from_hf(hf, tokenizer, name, device, dtype)


def load_local(path: Path, device: torch.device, dtype: torch.dtype, name: str):
    """A local directory in Hugging Face format (config, weights, tokenizer)."""
    bridge, n_kv = load_hf(str(path), device, dtype, name, f"the model in local directory {path}")
    return bridge, f"local directory {path}", n_kv


def load_hub(name: str, device: torch.device, dtype: torch.dtype):
    """Any causal LM the bridge supports, from the Hugging Face hub or its local cache."""
    if not (in_hub_cache(name) or hub_reachable()):
        builtins = ", ".join(sorted([*MODELS, *SHIPPED_MODELS]))
        raise UserError(
            f"cannot load model {name!r} as a Hugging Face hub name (it is not a built-in name [{builtins}] "
            f"nor a local directory, and the hub is unreachable and the model is not in its local cache); "
            f"{OFFLINE_HINT}"
        )
    bridge, n_kv = load_hf(name, device, dtype, name, f"hub model {name!r}")
    return bridge, f"hub {name}", n_kv


def first_sentence(error) -> str:
    """The whole first sentence of an error message, on one line (library messages span several)."""
    flat = " ".join(str(error).split())
    end = re.search(r"[.!?](\s|$)", flat)
    return (flat[: end.start() + 1] if end else flat)[:500] or type(error).__name__


def load_pythia_random(device: torch.device, dtype: torch.dtype, seed: int):
    """Pythia-160m's shape (GPT-NeoX: parallel attention and MLP, rotary on a quarter of each head, LayerNorm)
    with seeded random weights and the GPT-2 tokenizer: a second architecture offline (tests, benchmarks)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = gpt2_tokenizer()
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        use_parallel_residual=True,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    hf = random_model(GPTNeoXForCausalLM, config, seed)
    bridge, n_kv = bridge_from_hf(hf, tokenizer, "pythia-160m-random", device, dtype)
    return bridge, f"random Pythia-160m shape (GPT-NeoX), GPT-2 tokenizer, seed {seed}", n_kv


TOY_DIR = MODELS_DIR / "toy"
# Built-in names (and the shipped toy models, lib.core.choices.shipped_model_dir); anything else is a local
# directory or a hub name.
MODELS: dict[str, Callable] = {
    "gpt2-random": lambda device, dtype, seed: load_gpt2_random(device, dtype, seed),
    "pythia-160m-random": lambda device, dtype, seed: load_pythia_random(device, dtype, seed),
}


def load_model(
    name: str = "gpt2", device: str = "auto", dtype: str = "float32", seed: int = 0, processing: dict | None = None
) -> LoadedModel:
    """Load a model by name (README, Models) and prepare it; raises UserError when it cannot be had."""
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    check_model_name(name)
    if name in MODELS:
        loader = lambda: MODELS[name](dev, dt, seed)  # noqa: E731
    elif (shipped := shipped_model_dir(name)) is not None:
        loader = lambda: load_local(shipped, dev, dt, name)  # noqa: E731
    elif (path := user_path(name, "--model")).is_dir():
        loader = lambda: load_local(path, dev, dt, path.name)  # noqa: E731
    else:
        loader = lambda: load_hub(name, dev, dt)  # noqa: E731
    bridge, source, n_kv = _quiet(loader)
    return _finish(bridge, name, dev, dt, source, None, n_kv, processing)


def _finish(
    bridge,
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    source: str,
    tokenizer=None,
    n_kv_heads: int | None = None,
    processing: dict | None = None,
) -> LoadedModel:
    processing = dict(PROCESSED if processing is None else processing)
    _quiet(lambda: prepare(bridge, name, processing))
    tokenizer = tokenizer or bridge.tokenizer
    if tokenizer is None:
        raise UserError(f"model {name!r} has no tokenizer")
    arch = architecture.read(bridge, n_kv_heads or bridge.cfg.n_heads)
    model = LoadedModel(name, bridge, tokenizer, device, dtype, source, arch, processing)
    check_identity(model)
    return model
