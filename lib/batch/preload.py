"""What the forkserver of lib.batch.forked imports once, so a forked script finds it already loaded: every
heavy library the scripts use and every lib/ module. Imports only: no tensor is computed here and CUDA is not
initialised (a fork after CUDA initialisation cannot use the GPU)."""

import importlib
import pkgutil

import matplotlib

matplotlib.use("Agg")

import matplotlib.backends.backend_agg  # noqa: E402,F401 - what savefig loads on first use
import matplotlib.pyplot  # noqa: E402,F401
import pandas  # noqa: E402,F401
import scipy.stats  # noqa: E402,F401
import torch  # noqa: E402

importlib.import_module("pandas.io.formats.csvs")  # what to_csv loads on first use (private: not in pandas' stubs)
import transformer_lens  # noqa: E402,F401

# TransformerLens loads the bridge and its architecture adapters lazily: import what lib.core.model calls
import transformer_lens.factories.architecture_adapter_factory  # noqa: E402,F401
import transformer_lens.model_bridge.exceptions  # noqa: E402,F401
import transformer_lens.model_bridge.sources._bridge_builder  # noqa: E402,F401
import transformer_lens.utilities.multi_gpu  # noqa: E402,F401
import transformers  # noqa: E402

from lib.core import model as _model  # noqa: E402,F401

# transformers loads model classes lazily, on first attribute access: touch the ones the offline models use
for name in (
    "GPT2LMHeadModel",
    "GPT2Config",
    "GPTNeoXForCausalLM",
    "GPTNeoXConfig",
    "AutoTokenizer",
    "AutoModelForCausalLM",
    "AutoConfig",
    "PreTrainedTokenizerFast",
):
    getattr(transformers, name)

import tasks  # noqa: E402

for package in ("lib.core", "lib.methods", "lib.io", "lib.batch", "lib.features"):
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if f"{package}.{info.name}" not in ("lib.batch.preload", "lib.tools.toy"):
            importlib.import_module(f"{package}.{info.name}")
tasks.TASKS  # noqa: B018 - imports the task modules

for name in (
    "PIL.PngImagePlugin",
    "einops._torch_specific",
    "pandas.io.formats.string",
    "pydantic.main",
    "transformer_lens.model_bridge.sources.transformers_driver",
    "transformer_lens.utilities.architectures",
):
    importlib.import_module(name)  # image writing, einops on tensors, printed tables, the bridge's drivers

assert not torch.cuda.is_initialized(), "the forkserver must not initialise CUDA"
