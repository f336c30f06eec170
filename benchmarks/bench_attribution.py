"""Cost of one attribution graph (lib/features/attribution), as a ratio against its floor: the backward passes
it cannot avoid (one per batch of target rows) on a forward pass over that many copies of the prompt.

    uv run python benchmarks/bench_attribution.py --model gpt2-random --width 24576 --k 32
    uv run python benchmarks/bench_attribution.py --model toy --dictionaries toy

Rows: the graph's wall time; the number of target batches (logit and metric rows, then feature rows);
one batched backward pass through the whole model (median; feature rows of early layers stop sooner, so the ratio
can fall below 1); the graph / (batches x one backward pass), and / (that + the forward pass); peak memory (max
RSS on CPU, max allocated on CUDA), the weights' share of it, and the estimate the script prints before the work
(which leaves the weights out).
Random per-layer (or cross-layer) TopK transcoders of --width latents per layer on gpt2-random (GPT-2 small's
shape; Dunefsky et al.'s GPT-2 transcoders have 24,576), or a stored set (--dictionaries)."""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.io import checks, cli  # noqa: E402

app = cli.script_app(__doc__)


def _vm_hwm() -> int:
    """The process's peak resident memory since the last reset (VmHWM), in bytes."""
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def random_transcoders(lm, kind: str, width: int, k: int, seed: int):
    """Random TopK transcoders (per-layer, or cross-layer writing every later layer) of width latents per layer,
    reading ln2's output and writing the MLP's, on the model's device."""
    import torch

    from lib.features.transcoders import TranscoderSet

    L, d = lm.n_layers, lm.d_model
    g = torch.Generator().manual_seed(seed)
    w_dec = [
        torch.nn.functional.normalize(torch.randn(width, (L - l) if kind == "clt" else 1, d, generator=g), dim=-1)
        for l in range(L)
    ]
    tc = TranscoderSet(
        kind,
        f"random-{kind}",
        [f"blocks.{l}.ln2.hook_normalized" for l in range(L)],
        [f"blocks.{l}.hook_mlp_out" for l in range(L)],
        [torch.randn(d, width, generator=g) / d**0.5 for _ in range(L)],
        [torch.zeros(width) for _ in range(L)],
        w_dec,
        torch.zeros(L, d),
        "topk",
        k,
    )
    return tc.to(device=lm.device)


@app.command()
def main(
    model: cli.ModelOpt = "gpt2-random",
    device: cli.DeviceOpt = "auto",
    width: int = typer.Option(24576, help="latents per layer of random transcoders"),
    k: int = typer.Option(32, help="active latents per token (TopK)"),
    kind: str = typer.Option("plt", help="plt | clt (random ones)"),
    dictionaries: str = typer.Option("", "--dictionaries", help="a stored set instead of random transcoders"),
    target_batch: int = typer.Option(64, "--target-batch", help="target rows per backward pass"),
    repeats: int = typer.Option(3, help="timed backward passes (median)"),
    out: cli.OutOpt = Path("results"),
    seed: cli.SeedOpt = 0,
):
    checks.check_between(1, 1 << 20, ("--width", width))
    checks.check_between(1, width, ("--k", k))
    checks.check_between(1, 4096, ("--target-batch", target_batch))
    if kind not in ("plt", "clt"):
        from lib.core.errors import UserError

        raise UserError(f"unknown --kind {kind!r}; choose from plt, clt")
    import pandas as pd
    import torch

    from lib.core.choices import check_device_name
    from lib.core.model import load_model
    from lib.features import files
    from lib.features.attribution import _Pass, attribute, clean_state, memory_estimate, metric_direction
    from lib.io.graph_report import transcoder_sets
    from lib.io.results import RunDir
    from tasks import TASKS

    check_device_name(device)
    lm = load_model(model, device=device, seed=seed)
    data = TASKS["ioi"].build(lm.tokenizer, 1, seed)
    tokens = data.clean[0, : int(data.lengths[0])]
    d = lm.d_model
    if dictionaries:
        tc = transcoder_sets(files.load_set(dictionaries, lm), lm, dictionaries, kind)[kind]
    else:
        tc = random_transcoders(lm, kind, width, k, seed)
    direction = metric_direction(lm.bridge.W_U.detach(), data.correct[0].to(lm.device), data.wrong[0].to(lm.device))
    estimate = memory_estimate(lm, tc, tokens, target_batch, None, 10)
    print(f"estimate: {estimate}", file=sys.stderr)
    cuda = lm.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
    else:  # resident memory now (model, transcoders, runtime); the peak is reset so that it is the graph's (Linux)
        before = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
        Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    graph = attribute(lm, tc, tokens, direction, batch_size=target_batch)
    if cuda:
        torch.cuda.synchronize()
    t_graph = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else _vm_hwm()
    weights = sum(p.numel() * p.element_size() for p in lm.bridge.parameters()) + sum(
        t.numel() * t.element_size() for t in [*tc.W_enc, *tc.W_dec, *tc.b_enc, tc.b_dec]
    )
    batch = min(target_batch, graph.n_features + graph.n_logits + 1)
    n_batches = math.ceil((graph.n_logits + 1) / batch) + math.ceil(graph.n_features / batch)
    # the floor's parts: the forward pass over `batch` prompt copies, and one full batch of feature rows
    state = clean_state(lm, tc, tokens.to(lm.device))
    t0 = time.perf_counter()
    run = _Pass(lm, tc, tokens.to(lm.device), batch, state["embed"], state["mlp_out"])
    t_forward = time.perf_counter() - t0
    g = torch.Generator().manual_seed(seed)  # a full-depth backward pass: every row injected at the final residual
    rows = [(r, "final", graph.n_pos - 1, torch.randn(d, generator=g).to(lm.device)) for r in range(batch)]
    times = []
    for _ in range(repeats + 1):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run.rows(rows)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t_backward = statistics.median(times[1:])
    row = {
        "model": lm.name,
        "device": str(lm.device),
        "transcoders": graph.transcoders,
        "width": tc.d_sae,
        "k": tc.k,
        "positions": graph.n_pos,
        "active_features": len(graph.active),
        "nodes": graph.adjacency.shape[0],
        "target_batch": batch,
        "target_batches": n_batches,
        "graph_seconds": t_graph,
        "forward_pass_seconds": t_forward,
        "backward_pass_seconds": t_backward,
        "graph_over_backward_floor": t_graph / (n_batches * t_backward),
        "graph_over_floor_with_forward": t_graph / (n_batches * t_backward + t_forward),
        "peak_memory_mib": peak / 2**20,
        "weights_mib": weights / 2**20,
        "peak_beyond_weights_mib": (peak - weights) / 2**20,
        "graph_peak_mib": (peak - before) / 2**20,
        "estimate": estimate,
    }
    frame = pd.DataFrame([row])
    run_dir = RunDir(
        out,
        "bench_attribution",
        {
            "options": {
                "model": model,
                "width": width,
                "k": k,
                "kind": kind,
                "target_batch": target_batch,
                "device": str(lm.device),
            }
        },
        sys.argv,
    )
    run_dir.csv("bench.csv", frame)
    print(frame.T.to_string(header=False))
    print(f"wrote {run_dir.finish()}")


if __name__ == "__main__":
    cli.main(app)
