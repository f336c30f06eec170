"""Speed of the intervention engine, EAP and node patching, as ratios against the bare model.

    uv run python benchmarks/bench_engine.py --model gpt2-random --n-prompts 32 [--device cuda]
    uv run python benchmarks/bench_engine.py --model pythia-160m-random --n-prompts 32   (second architecture)

(a) EAP (2 forward + 1 backward by design) / (2 bare forward + 1 bare backward), and peak memory;
(b) one masked evaluation (canonical IOI circuit where published, else half the edges) / one bare forward;
(c) 03's node patching of every head and MLP (one direction) / the same number of bare forward passes;
(d) one ACDC trial (edge into a receiver at layer l, recomputing blocks l.. with the search's hooks) / the
    bare partial forward from layer l, for early, middle and late l (on rotary models every trial is a full
    pass, measured against the bare full forward); and ACDC's total forward passes;
(f) 08's exact single-edge effects per edge / one masked forward, and 07's path patching (direct and
    through-mlps, to the logits) per sender / one bare forward;
(e) causal scrubbing of the IOI hypothesis (canonical features on the canonical circuit where published,
    else the answer feature on half the edges; pool of 10 x n prompts) / one bare forward of the n
    prompts, and per forward row it needs (rows of its plain and scrubbed passes).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import typer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.core.graph import graph_of  # noqa: E402
from lib.core.metrics import data_metric  # noqa: E402
from lib.core.model import load_model  # noqa: E402
from lib.core.patching import ablate_mask, ablation_values, masked_answer_logits  # noqa: E402
from lib.io import cli  # noqa: E402
from lib.methods.acdc import PartialRunner, edge_order  # noqa: E402
from lib.methods.canonical import canonical_circuit  # noqa: E402
from lib.methods.eap import edge_scores  # noqa: E402
from lib.methods.node_patching import heads_and_mlps, patch_metrics  # noqa: E402
from tasks import TASKS  # noqa: E402

app = cli.script_app(__doc__)


def timed(fn, repeats: int, device, warmup: bool = True) -> float:
    """Median wall time of fn over repeats, after one warm-up call."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@app.command()
def main(
    model: cli.ModelOpt = "gpt2-random",
    device: cli.DeviceOpt = "auto",
    n_prompts: cli.NPromptsOpt = 32,
    repeats: int = 3,
    seed: cli.SeedOpt = 0,
    out: cli.OutOpt = Path("results"),
    node_patching: bool = typer.Option(True, help="include (c), the slowest measurement"),
):
    opts = cli.common("ioi", model, device, "float32", n_prompts, n_prompts, seed, out)
    lm = load_model(opts.model, opts.device, "float32", seed)
    dev, graph = lm.device, graph_of(lm)
    data = TASKS["ioi"].build(lm.tokenizer, n_prompts, seed).to(dev)
    rows = torch.arange(len(data), device=dev)

    def bare_forward():
        with torch.no_grad():
            lm.bridge(data.clean)

    def bare_fwd_bwd():
        def grad_input(x, hook):
            return x.detach().requires_grad_(True)

        with torch.enable_grad(), lm.bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", grad_input)]):
            logits = lm.bridge(data.clean)
            data_metric(logits[rows, data.answer_pos], data).sum().backward()

    def floor_eap():
        bare_forward()
        bare_fwd_bwd()

    t_fwd = timed(bare_forward, repeats, dev)
    t_floor = timed(floor_eap, repeats, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_eap = timed(lambda: edge_scores(lm, graph, data, len(data), "eap"), repeats, dev)
    eap_mem = peak_memory_mb(dev)

    keep = canonical_circuit("ioi", graph, lm.name)
    keep = keep if keep is not None else (torch.rand(graph.edge_exists.shape) < 0.5) & graph.edge_exists
    values = ablation_values(lm, graph, data, "resample")
    ablate = ablate_mask(graph, keep)
    t_masked = timed(lambda: masked_answer_logits(lm, graph, data, values, ablate), repeats, dev)

    # 08: exact single-edge effects, many edge masks per pass; per edge / one masked forward
    from lib.methods.agreement import exact_effects
    from lib.methods.path_patching import PathPatcher

    clean_metric = data_metric(lm.bridge(data.clean)[rows, data.answer_pos], data).detach().cpu().numpy()
    few = [tuple(e) for e in graph.edge_exists.nonzero().tolist()[:: max(1, graph.n_edges // 64)]][:64]
    t_edges = timed(lambda: exact_effects(lm, graph, data, few, clean_metric, "resample", len(data)), 1, dev)
    # 07: path patching of 32 senders spread over the layers to the logits; per sender / one bare forward
    senders = [int(s) for s in torch.linspace(1, graph.n_sources - 1, 32).long().unique()]
    to_logits = torch.zeros(graph.n_receivers, dtype=torch.bool)
    to_logits[graph.logits_receiver] = True
    per_pass = max(1, lm.rows_per_pass // len(data))  # senders per pass, as 07 chunks them

    def path_patching(path):
        patcher = PathPatcher(lm, graph, data, "noise")
        for s0 in range(0, len(senders), per_pass):
            patcher.metrics(senders[s0 : s0 + per_pass], to_logits, path)

    t_path = {p: timed(lambda p=p: path_patching(p), 1, dev) for p in ("direct", "through-mlps")}
    path_rows = [
        {
            "measure": f"08 exact effect per edge ({len(few)} edges) / masked forward",
            "seconds": t_edges / len(few),
            "floor_seconds": t_masked,
            "ratio": t_edges / len(few) / t_masked,
            "target": 1.0,
            "peak_memory_mb": peak_memory_mb(dev),
        }
    ] + [
        {
            "measure": f"07 path patching per sender ({len(senders)} senders, {p}, to logits) / bare forward",
            "seconds": t / len(senders),
            "floor_seconds": t_fwd,
            "ratio": t / len(senders) / t_fwd,
            "target": float("nan"),
            "peak_memory_mb": peak_memory_mb(dev),
        }
        for p, t in t_path.items()
    ]

    comps = heads_and_mlps(lm.n_layers, lm.n_heads)
    per_pass = max(1, lm.rows_per_pass // len(data))
    t_patch = (
        timed(lambda: patch_metrics(lm, data, comps, "denoise", per_pass), 1, dev, warmup=False)
        if node_patching
        else float("nan")
    )

    runner = PartialRunner(lm, graph, data, "resample", len(data))
    acdc_rows = []
    for layer in sorted({0, lm.n_layers // 2, lm.n_layers - 1}):
        s_idx, r_idx = 0, graph.qkv_receivers(layer, "q").start
        runner.ablate[s_idx, r_idx] = 1.0

        def bare_partial(layer=layer):
            if runner.full:  # rotary blocks cannot start mid-model: ACDC's trials are full passes
                return bare_forward()
            with torch.no_grad():
                x = runner.resid[0][layer]
                for l in range(layer, lm.n_layers):
                    y = lm.bridge.blocks[l](x)
                    x = y[0] if isinstance(y, tuple) else y
                lm.bridge.unembed(lm.bridge.ln_final(x))

        t_bare = timed(bare_partial, repeats, dev)
        with lm.bridge.hooks(fwd_hooks=runner.hooks()):
            t_trial = timed(lambda layer=layer: runner.logits(0, layer), repeats, dev)
        runner.ablate[s_idx, r_idx] = 0.0
        floor = (
            "bare full forward (rotary: no partial recompute)" if runner.full else f"bare forward from layer {layer}"
        )
        acdc_rows.append(
            {
                "measure": f"ACDC trial at layer {layer} / {floor}",
                "seconds": t_trial,
                "floor_seconds": t_bare,
                "ratio": t_trial / t_bare,
                "target": float("nan"),
                "peak_memory_mb": peak_memory_mb(dev),
            }
        )
    acdc_rows.append(
        {
            "measure": "ACDC forward passes per threshold (edges x batches)",
            "seconds": float("nan"),
            "floor_seconds": float("nan"),
            "ratio": float(len(edge_order(graph)) * len(runner.batches)),
            "target": float("nan"),
            "peak_memory_mb": float("nan"),
        }
    )

    from lib.methods.hypotheses import answer_feature, canonical_features
    from lib.methods.scrubbing import Pool, draw, scrubbed_logits

    pool = Pool.of(TASKS["ioi"].build(lm.tokenizer, 10 * n_prompts, seed), TASKS["ioi"])
    hyp = (
        canonical_features("ioi", graph, keep)
        if canonical_circuit("ioi", graph, lm.name) is not None
        else answer_feature("ioi", graph, keep)
    )
    assert hyp is not None  # the canonical circuit exists whenever canonical_features is asked
    draws = draw(graph, pool, hyp, seed)
    eval_idx = torch.arange(n_prompts).numpy()
    stats = {}
    t_scrub = timed(
        lambda: stats.update(scrubbed_logits(lm, graph, pool, hyp, draws, eval_idx, n_prompts)[1]), repeats, dev
    )
    rows_needed = stats["plain_rows"] + stats["scrub_rows"]
    scrub_rows = [
        {
            "measure": f"causal scrubbing ({hyp.label}) / bare forward",
            "seconds": t_scrub,
            "floor_seconds": t_fwd,
            "ratio": t_scrub / t_fwd,
            "target": float("nan"),
            "peak_memory_mb": peak_memory_mb(dev),
        },
        {
            "measure": f"causal scrubbing / bare forward of its {rows_needed} rows",
            "seconds": t_scrub,
            "floor_seconds": t_fwd * rows_needed / n_prompts,
            "ratio": t_scrub / (t_fwd * rows_needed / n_prompts),
            "target": float("nan"),
            "peak_memory_mb": peak_memory_mb(dev),
        },
    ]

    table = pd.DataFrame(
        [
            {
                "measure": "EAP / (2 fwd + 1 bwd)",
                "seconds": t_eap,
                "floor_seconds": t_floor,
                "ratio": t_eap / t_floor,
                "target": 1.5,
                "peak_memory_mb": eap_mem,
            },
            {
                "measure": "masked evaluation / bare forward",
                "seconds": t_masked,
                "floor_seconds": t_fwd,
                "ratio": t_masked / t_fwd,
                "target": 1.3,
                "peak_memory_mb": peak_memory_mb(dev),
            },
            {
                "measure": f"03 heads+MLPs ({len(comps)} patches) / {len(comps)} bare forwards",
                "seconds": t_patch,
                "floor_seconds": len(comps) * t_fwd,
                "ratio": t_patch / (len(comps) * t_fwd),
                "target": 0.6 if lm.arch.starts_mid_model else float("nan"),
                "peak_memory_mb": peak_memory_mb(dev),
            },
        ]
        + acdc_rows
        + scrub_rows
        + path_rows
    ).assign(model=lm.name, device=str(dev), n_prompts=len(data), positions=int(data.clean.shape[1]))
    print(table.to_string(index=False, float_format="%.3f"))
    from lib.io.results import RunDir

    run = RunDir(
        opts.out,
        "benchmarks",
        {"options": {"model": model, "device": device, "n_prompts": n_prompts, "repeats": repeats, "seed": seed}},
        sys.argv[1:],
    )
    run.csv("bench_engine.csv", table)
    print(f"wrote {run.finish(model=lm.describe())}")


if __name__ == "__main__":
    cli.main(app)
