"""Cost of splicing sparse dictionaries into the forward pass (lib/features), as ratios against the bare model.

    uv run python benchmarks/bench_features.py --model gpt2-random --width 24576 --n-prompts 16
    uv run python benchmarks/bench_features.py --model toy --dictionaries toy

Rows: the spliced forward (every dictionary encoded and decoded, error nodes added: the model's own output) /
the bare forward, and per dictionary site; attribution node effects / one spliced forward and backward (their
floor: two state passes and one gradient point); IG node effects / (sites x steps x one forward and backward)
(Marks et al.'s IG interpolates one site at a time); random dictionaries of --width latents (TopK, k = 32) at the
embedding and every layer's attention output, MLP output and residual stream (GPT-2's shape: 37 sites,
5.6 GB of float32 weights at 24,576 latents), or a stored set (--dictionaries); peak memory (max RSS)."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.io import checks, cli  # noqa: E402

app = cli.script_app(__doc__)


@app.command()
def main(
    model: cli.ModelOpt = "gpt2-random",
    width: int = typer.Option(24576, help="latents of random dictionaries"),
    dictionaries: str = typer.Option("", "--dictionaries", help="a stored set instead of random ones"),
    n_prompts: cli.NPromptsOpt = 16,
    repeats: int = typer.Option(3, help="timed passes (median)"),
    only: str = typer.Option("", "--sites", help="only these sites (space-separated), e.g. for IG on GPT-2's shape"),
    ig_steps: int = typer.Option(5, "--ig-steps", help="IG steps of the node-effect rows"),
    out: cli.OutOpt = Path("results"),
    seed: cli.SeedOpt = 0,
):
    checks.check_between(1, 1 << 20, ("--width", width))
    checks.check_between(1, 100, ("--repeats", repeats))
    import pandas as pd
    import torch

    from lib.core.errors import UserError
    from lib.core.model import load_model
    from lib.features import files
    from lib.features.dictionary import Dictionary
    from lib.features.effects import node_effects
    from lib.features.splice import splice_hooks
    from lib.io.results import RunDir
    from lib.tools.dictionaries import sites
    from tasks import TASKS

    lm = load_model(model, device="cpu", seed=seed)
    tokens = TASKS["ioi"].build(lm.tokenizer, n_prompts, seed).clean
    if dictionaries:
        chosen = {
            n: d for n, d in files.load_set(dictionaries, lm).items() if d.kind != "clt"
        }  # CLTs: bench_attribution
    else:
        g = torch.Generator().manual_seed(seed)
        d = lm.d_model
        chosen = {}
        for name, (hook_in, hook_out) in sites(lm.n_layers).items():
            if hook_in != hook_out:
                continue  # SAEs only: transcoders cost the same per token
            chosen[name] = Dictionary(
                {"architecture": "topk", "k": 32, "hook_name": hook_in},
                torch.randn(d, width, generator=g) / d**0.5,
                torch.nn.functional.normalize(torch.randn(width, d, generator=g), dim=-1),
                torch.zeros(width),
                torch.zeros(d),
            )

    def timed_fn(fn) -> float:
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])

    def timed(hooks) -> float:
        times = []
        for _ in range(repeats + 1):
            t = time.perf_counter()
            with torch.no_grad():
                lm.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
            times.append(time.perf_counter() - t)
        return statistics.median(times[1:])  # the first pass warms up

    if only:
        chosen = {k: v for k, v in chosen.items() if k in only.split()}
        if not chosen:
            raise UserError(f"--sites {only!r} names no dictionary of the set")
    bare = timed([])
    spliced = timed(splice_hooks(chosen))
    data = TASKS["ioi"].build(lm.tokenizer, n_prompts, seed)

    def backward_pass() -> None:  # the floor of one gradient point: the spliced forward and its backward
        from lib.features.effects import folded_gradients, node_states

        folded_gradients(lm, chosen, data, node_states(lm, chosen, data.clean))

    def effects(method: str) -> None:
        node_effects(lm, chosen, data, method, "corrupted", ig_steps)

    def edges_of_one_node() -> None:  # every upstream node of one downstream feature: one backward pass
        from lib.features.edges import edge_effects, upstream_of
        from lib.features.effects import folded_gradients, node_states
        from lib.features.splice import site as site_of

        sites = {site_of(d): d for d in chosen.values()}
        down = next((s for s in sites if upstream_of(s, set(sites))), None)
        if down is None:
            return
        clean = node_states(lm, chosen, data.clean)
        patched = node_states(lm, chosen, data.corrupt)
        grads = folded_gradients(lm, chosen, data, clean)
        ups = {s: (torch.ones(sites[s].d_sae, dtype=torch.bool), True) for s in upstream_of(down, set(sites))}
        edge_effects(lm, chosen, data, {down: ([0], False)}, ups, clean, patched, grads)

    t_point = timed_fn(backward_pass)
    t_edges = timed_fn(edges_of_one_node)
    t_attrib = timed_fn(lambda: effects("attrib"))
    t_ig = timed_fn(lambda: effects("ig"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    widths = sorted({dd.d_sae for dd in chosen.values()})
    table = pd.DataFrame(
        [
            {
                "measure": f"spliced forward ({len(chosen)} dictionaries) / bare forward",
                "seconds": spliced,
                "floor_seconds": bare,
                "ratio": spliced / bare,
            },
            {
                "measure": "spliced forward, per dictionary / bare forward",
                "seconds": (spliced - bare) / len(chosen),
                "floor_seconds": bare,
                "ratio": (spliced - bare) / len(chosen) / bare,
            },
            {
                "measure": "attribution node effects / one spliced forward + backward",
                "seconds": t_attrib,
                "floor_seconds": t_point,
                "ratio": t_attrib / t_point,
            },
            {
                "measure": "edges into one downstream node (all its upstream nodes) / one spliced forward + backward",
                "seconds": t_edges,
                "floor_seconds": t_point,
                "ratio": t_edges / t_point,
            },
            {
                "measure": f"IG node effects / ({len(chosen)} sites x {ig_steps} steps x (forward + backward))",
                "seconds": t_ig,
                "floor_seconds": t_point * len(chosen) * ig_steps,
                "ratio": t_ig / (t_point * len(chosen) * ig_steps),
            },
        ]
    ).assign(
        model=lm.name,
        n_prompts=len(tokens),
        positions=int(tokens.shape[1]),
        width=" ".join(map(str, widths)),
        sites=" ".join(chosen),
        peak_memory_mb=peak,
    )
    print(table.to_string(index=False, float_format="%.3f"))
    run = RunDir(
        out,
        "benchmarks",
        {
            "options": {
                "model": model,
                "width": width,
                "dictionaries": dictionaries,
                "n_prompts": n_prompts,
                "repeats": repeats,
            }
        },
        sys.argv[1:],
    )
    run.csv("bench_features.csv", table)
    print(f"wrote {run.finish(model=lm.describe())}")


if __name__ == "__main__":
    cli.main(app)
