"""Seconds per circuit of MIB's area curves (05's and 06's `area.csv`, `mib_curve.csv`) against their floor.

    uv run python benchmarks/bench_mib.py --model gpt2-random --n-prompts 16 [--device cuda]

mib_curves evaluates (n_random + 2) x 10 circuits (random ones, then the signed and absolute rankings at MIB's
ten sizes) and the empty circuit. The floor of one evaluated circuit is one masked forward of the same batch
with the ablation values already at hand: what the EAP-IG library's `evaluate_graph` does per circuit. Measured
twice in one run: with the evaluator's ablation cache (each batch's corrupted forward once for all circuits, the
suite's default) and without it (recomputed for every circuit, as before the cache). Target: ratio <= 1.2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_engine import timed  # noqa: E402

from lib.core.graph import graph_of  # noqa: E402
from lib.core.model import load_model  # noqa: E402
from lib.core.patching import AblationCache, ablate_mask, masked_answer_logits  # noqa: E402
from lib.io import cli  # noqa: E402
from lib.methods.area import mib_circuit_count, mib_curves  # noqa: E402
from lib.methods.faithfulness import Evaluator  # noqa: E402
from tasks import TASKS  # noqa: E402

app = cli.script_app(__doc__)


@app.command()
def main(
    model: cli.ModelOpt = "gpt2-random",
    device: cli.DeviceOpt = "auto",
    n_prompts: cli.NPromptsOpt = 16,
    n_random: int = 10,
    task: str = "greater-than",
    repeats: int = 3,
    seed: cli.SeedOpt = 0,
    out: cli.OutOpt = Path("results"),
):
    opts = cli.common(task, model, device, "float32", n_prompts, n_prompts, seed, out)
    lm = load_model(opts.model, opts.device, "float32", seed)
    dev, graph = lm.device, graph_of(lm)
    data = TASKS[task].build(lm.tokenizer, n_prompts, seed).to(dev)
    importance = torch.randn(graph.edge_exists.shape, generator=torch.Generator().manual_seed(seed))
    n_circuits = mib_circuit_count(n_random) + 1  # and the empty circuit

    keep = (torch.rand(graph.edge_exists.shape, generator=torch.Generator().manual_seed(1)) < 0.5) & graph.edge_exists
    values = AblationCache(lm, graph, data, "resample", len(data)).values(0, data)
    ablate = ablate_mask(graph, keep)
    t_floor = timed(lambda: masked_answer_logits(lm, graph, data, values, ablate), repeats, dev)

    rows = []
    for cached in (False, True):
        ev = Evaluator(lm, graph, data, "resample", len(data))
        if not cached:
            ev.cache = AblationCache(lm, graph, data, "resample", len(data), max_bytes=0)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        mib_curves(ev, graph, importance, n_random=n_random, seed=seed)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        per_circuit = (time.perf_counter() - t) / n_circuits
        rows.append(
            {
                "measure": f"MIB curve, per evaluated circuit ({'cached' if cached else 'uncached'} ablation values)",
                "circuits": n_circuits,
                "seconds": per_circuit,
                "floor_seconds": t_floor,
                "ratio": per_circuit / t_floor,
                "target": 1.2,
            }
        )
    table = pd.DataFrame(rows)
    print(f"model {lm.name} on {dev}, {len(data)} {task} prompts, {graph.n_edges:,} edges")
    print(table.to_string(index=False, float_format="%.4g"))


if __name__ == "__main__":
    cli.main(app)
