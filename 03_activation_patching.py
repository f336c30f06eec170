"""Node-level activation patching: every head, every MLP, and the residual stream at every (layer,
position), in both directions (denoise: clean into corrupted; noise: corrupted into clean)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from lib.core import choices
from lib.core.errors import UserError
from lib.io import checks, cli, progress
from lib.io.headline import Metric

app = cli.script_app(__doc__)
HEADLINE = [  # the strongest single head and MLP per direction (normalized metric)
    Metric(
        "top_head_{direction}",
        "patching.csv",
        by=("direction",),
        where={"kind": "head"},
        fn=lambda d: d.normalized.max() if d.direction.iloc[0] == "denoise" else d.normalized.min(),
    ),
    Metric(
        "top_mlp_{direction}",
        "patching.csv",
        by=("direction",),
        where={"kind": "mlp"},
        fn=lambda d: d.normalized.max() if d.direction.iloc[0] == "denoise" else d.normalized.min(),
    ),
]


def aligned_group(data) -> list[int]:
    """Indices of the largest set of items sharing template (IOI; ABBA and BABA align) or group, and
    length, so that positions mean the same tokens."""
    import pandas as pd

    keys = (
        data.info["template" if "template" in data.info else "group"].astype(str)
        + "|"
        + pd.Series(data.lengths.tolist()).astype(str)
    )
    best = keys.value_counts(sort=True).index[0]
    return np.flatnonzero((keys == best).to_numpy()).tolist()


def run_patches(lm, data, components, direction, batch_size, rows_per_pass, desc) -> np.ndarray:
    """Task metric per component and item, [C, N]."""
    from lib.methods.node_patching import data_patch_metrics

    n_batches = -(-len(data) // batch_size)
    with progress.bar(len(components) * n_batches, desc, "patch") as bar:
        return data_patch_metrics(lm, data, components, direction, batch_size, rows_per_pass, progress=bar)


def patch_task(lm, name: str, data, directions: list[str], opts, rows_per_pass: int) -> dict:
    """One task's rows, head maps and residual-stream maps, per direction."""
    from lib.core.evaluate import behaviour
    from lib.methods import intervals
    from lib.methods.node_patching import heads_and_mlps, residual_positions

    rows, head_maps, resid_maps = [], {}, {}
    L, H, batch_size = lm.n_layers, lm.n_heads, opts.batch_size
    base = behaviour(lm, data, batch_size)
    clean, corrupt = base.metric_clean.to_numpy(), base.metric_corrupted.to_numpy()
    aligned_idx = aligned_group(data)
    aligned = data.subset(aligned_idx)
    tokens = lm.tokenizer.convert_ids_to_tokens(aligned.clean[0, : int(aligned.lengths[0])].tolist())
    for d in directions:
        comps = heads_and_mlps(L, H)
        r = intervals.normalized_columns(
            run_patches(lm, data, comps, d, batch_size, rows_per_pass, f"{name} {d}: heads+MLPs"),
            clean,
            corrupt,
            opts.n_bootstrap,
            opts.seed,
        )
        for i, c in enumerate(comps):
            rows.append(
                {
                    "task": name,
                    "direction": d,
                    "component": c.name,
                    "kind": c.kind,
                    "layer": c.layer,
                    "head": c.index if c.kind == "head" else -1,
                    "position": -1,
                    "token": "",
                    "n": len(data),
                    **{k: v[i] for k, v in r.items()},
                }
            )
        head_maps[f"{name} ({d})"] = r["normalized"][: L * H].reshape(L, H)
        P = int(aligned.lengths[0])
        rcomps = residual_positions(L, P)
        r = intervals.normalized_columns(
            run_patches(lm, aligned, rcomps, d, batch_size, rows_per_pass, f"{name} {d}: resid x pos"),
            clean[aligned_idx],
            corrupt[aligned_idx],
            opts.n_bootstrap,
            opts.seed,
        )
        for i, c in enumerate(rcomps):
            rows.append(
                {
                    "task": name,
                    "direction": d,
                    "component": c.name,
                    "kind": c.label,
                    "layer": c.layer,
                    "head": -1,
                    "position": c.index,
                    "token": tokens[c.index],
                    "n": len(aligned),
                    **{k: v[i] for k, v in r.items()},
                }
            )
        resid_maps[f"{name} ({d})"] = (r["normalized"].reshape(L + 1, P), tokens)
    return {"rows": rows, "head_maps": head_maps, "resid_maps": resid_maps}


@app.command()
def main(
    tasks: cli.TasksOpt = "all",
    model: cli.ModelOpt = "gpt2",
    device: cli.DeviceOpt = "auto",
    dtype: cli.DtypeOpt = "float32",
    n_prompts: cli.NPromptsOpt = 100,
    batch_size: cli.BatchOpt = 32,
    seed: cli.SeedOpt = 0,
    out: cli.OutOpt = Path("results"),
    task_metric: cli.TaskMetricOpt = "",
    direction: Annotated[str, typer.Option(help="denoise | noise | both")] = "both",
    rows_per_pass: cli.RowsPerPassOpt = None,
    n_bootstrap: cli.NBootstrapOpt = 1000,
    quiet: cli.QuietOpt = False,
    resume: cli.ResumeOpt = None,
):
    directions: list[str] = list(choices.NODE_PATCH_DIRECTIONS) if direction == "both" else [direction]
    if any(d not in choices.NODE_PATCH_DIRECTIONS for d in directions):
        raise UserError(f"unknown direction {direction!r}; choose from denoise, noise, both")
    checks.check_rows_per_pass(rows_per_pass)
    opts = cli.common(
        tasks, model, device, dtype, n_prompts, batch_size, seed, out, quiet, n_bootstrap, task_metric=task_metric
    )
    # the work's imports, once the options are valid (--help and option errors never pay for them)
    import pandas as pd

    from lib.io import plots

    with cli.experiment(
        "03_activation_patching",
        opts,
        resume=resume,
        headline=HEADLINE,
        direction=direction,
        rows_per_pass=rows_per_pass,
    ) as (lm, run):
        datasets = cli.task_builds(lm, opts)
        results = cli.per_task(
            run,
            opts.tasks,
            lambda name: patch_task(lm, name, datasets[name], directions, opts, rows_per_pass or lm.rows_per_pass),
        )
        rows = [row for r in results.values() for row in r["rows"]]
        head_maps = {k: v for r in results.values() for k, v in r["head_maps"].items()}
        resid_maps = {k: v for r in results.values() for k, v in r["resid_maps"].items()}
        run.csv("dataset.csv", pd.concat([d.dataset_frame(lm.tokenizer) for d in datasets.values()]))
        run.csv("patching.csv", pd.DataFrame(rows))
        meaning = "normalized metric: denoise 1 = patch restores clean; noise 0 = patch destroys it"
        run.figure(
            "patching_heads.png",
            plots.heatmaps(
                head_maps, f"Activation patching per head ({meaning})", "head", "layer", "normalized metric"
            ),
        )
        for key, (values, tokens) in resid_maps.items():
            slug = key.replace(" (", "_").replace(")", "")
            shown = [lm.tokenizer.convert_tokens_to_string([t]).replace("\n", "\\n") for t in tokens]
            run.figure(
                f"patching_resid_{slug}.png",
                plots.heatmaps(
                    {key: values},
                    f"Residual stream patching at each position\n({meaning})",
                    "position (token)",
                    "residual stream",
                    "normalized metric",
                    xticklabels=shown,
                    yticklabels=[f"resid_pre {l}" for l in range(lm.n_layers)] + [f"resid_post {lm.n_layers - 1}"],
                ),
            )
        df = pd.DataFrame(rows)
        top = df[df.kind.isin(["head", "mlp"])].assign(a=lambda x: (x.normalized - (x.direction == "noise")).abs())
        print(
            top.sort_values("a", ascending=False)
            .groupby(["task", "direction"])
            .head(3)[["task", "direction", "component", "normalized"]]
            .to_string(index=False, float_format="%.3f")
        )


if __name__ == "__main__":
    cli.main(app)
