"""What the forkserver of lib.batch.forked imports once, so a forked script finds it already loaded: every
heavy library the scripts use and every lib/ module. Imports only: no tensor is computed here and CUDA is not
initialised (a fork after CUDA initialisation cannot use the GPU)."""

import importlib
import pkgutil

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot  # noqa: E402,F401
import pandas  # noqa: E402,F401
import scipy.stats  # noqa: E402,F401
import torch  # noqa: E402
import transformer_lens  # noqa: E402,F401
import transformers  # noqa: E402

from lib.core import model as _model  # noqa: E402,F401

# transformers loads model classes lazily, on first attribute access: touch the ones the offline models use
for name in ("GPT2LMHeadModel", "GPT2Config", "GPTNeoXForCausalLM", "GPTNeoXConfig", "AutoTokenizer",
             "AutoModelForCausalLM", "AutoConfig", "PreTrainedTokenizerFast"):
    getattr(transformers, name)

import tasks  # noqa: E402

for package in ("lib.core", "lib.methods", "lib.io", "lib.batch"):
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if f"{package}.{info.name}" not in ("lib.batch.preload", "lib.core.toy"):
            importlib.import_module(f"{package}.{info.name}")
tasks.TASKS  # noqa: B018 - imports the task modules

assert not torch.cuda.is_initialized(), "the forkserver must not initialise CUDA"
