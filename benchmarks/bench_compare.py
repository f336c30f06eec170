"""The cost of 11_compare_models.py's comparison against its parts: the two models' EAP-IG scores, their
attribution graphs (where dictionaries are given), and the ridge maps (the activations they are fitted to and the
fits). Everything else the comparison does (evaluating circuits in both models, feature matching and effects,
graph alignment, baselines and permutation tests, cross-model patching) is its own overhead, reported as a share
of the parts; the target is at most 0.3.

    uv run python benchmarks/bench_compare.py                                   # toy against toy-seed1, with dictionaries
    uv run python benchmarks/bench_compare.py --models gpt2-random gpt2-random --seed-b 1 --no-dictionaries

The stage seconds are pipeline.compare's own (run.json's `seconds` in a real run); a task's stages run once each."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.io import cli, progress  # noqa: E402

app = cli.script_app(__doc__)
PARTS = ("eap_ig", "attribution_graphs", "ridge_maps")
TARGET = 0.3


@app.command()
def main(
    models_spec: str = typer.Option("toy toy-seed1", "--models", help="A and B"),
    seed_b: int = typer.Option(0, "--seed-b", help="B's seed (two random models differ by seed; A's is 0)"),
    task: str = typer.Option("ioi", "--task"),
    n_prompts: int = typer.Option(16, "--n-prompts"),
    n_graphs: int = typer.Option(4, "--n-graphs"),
    dictionaries: bool = typer.Option(True, "--dictionaries/--no-dictionaries", help="each model's shipped set"),
    device: str = typer.Option("cpu", "--device"),
    batch_size: int = typer.Option(16, "--batch-size"),
):
    from lib.compare import pipeline
    from lib.compare.verdict import Thresholds
    from lib.core.model import load_model
    from lib.features import files
    from lib.methods.faithfulness import discovery_and_held_out

    models = models_spec.split()
    t0 = time.perf_counter()
    lm_a = load_model(models[0], device, seed=0)
    lm_b = load_model(models[1], device, seed=seed_b)
    dicts = None
    if dictionaries:
        dicts = tuple(
            files.fit({n: d for n, d in files.read_set(files.resolve(m)).items() if n.startswith(("tc", "resid"))}, lm)
            for m, lm in zip(models, (lm_a, lm_b))
        )
    print(f"loaded {models[0]} and {models[1]} on {lm_a.device} in {time.perf_counter() - t0:.1f} s")
    split = discovery_and_held_out(task, lm_a.tokenizer, n_prompts, 0)
    opts = SimpleNamespace(batch_size=batch_size, n_bootstrap=1000, seed=0, n_prompts=n_prompts)
    extra = dict(
        top_k=50,
        ig_steps=5,
        n_graphs=n_graphs,
        node_threshold=0.8,
        edge_threshold=0.98,
        ridge_alpha=None,
        n_resamples=50,
        n_permutations=200,
        n_clusters=2,
    )

    agree = {"same_vocabulary": True, "same_positions": True}
    out = pipeline.compare(
        lm_a, lm_b, split, split, task, opts, extra, agree, dicts, None, Thresholds(), progress.silent_bar
    )
    seconds = out["seconds"]
    parts = sum(seconds.get(p, 0.0) for p in PARTS)
    total = seconds["total"]
    for stage, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
        kind = "part" if stage in PARTS else "total" if stage == "total" else "overhead"
        print(f"{stage:>20}: {s:8.2f} s  ({kind})")
    overhead = (total - parts) / parts
    print(
        f"{models[0]} vs {models[1]}, {task}, {n_prompts} prompts, {n_graphs if dicts else 0} graphs per model: "
        f"parts {parts:.2f} s, comparison {total:.2f} s, overhead {overhead:.2f} of the parts "
        f"(target <= {TARGET}: {'met' if overhead <= TARGET else 'NOT met'})"
    )


if __name__ == "__main__":
    cli.main(app)
