"""Direct logit attribution per embedding, attention head and MLP, onto each task's answer direction."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lib.io import cli, progress
from lib.io.headline import Metric

app = cli.script_app(__doc__)
HEADLINE = [
    Metric("model_logit_diff", "dla_check.csv", "model_logit_diff"),
    Metric("dla_max_abs_error", "dla_check.csv", "max_abs_error"),
]


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
    n_bootstrap: cli.NBootstrapOpt = 1000,
    quiet: cli.QuietOpt = False,
    resume: cli.ResumeOpt = None,
):
    opts = cli.common(
        tasks, model, device, dtype, n_prompts, batch_size, seed, out, quiet, n_bootstrap, task_metric=task_metric
    )
    # the work's imports, once the options are valid (--help and option errors never pay for them)
    import pandas as pd

    from lib.io import plots

    with cli.experiment("01_dla", opts, resume=resume, headline=HEADLINE) as (lm, run):
        datasets = cli.task_builds(lm, opts)
        with progress.bar(sum(map(len, datasets.values())), "DLA", "prompt") as bar:
            results = cli.per_task(run, opts.tasks, lambda name: dla_task(lm, name, datasets[name], opts, bar))
        L, H = lm.n_layers, lm.n_heads
        rows = [row for r in results.values() for row in r["rows"]]
        checks = [r["check"] for r in results.values()]
        heat = {name: r["mean"][1 : 1 + L * H].reshape(L, H) for name, r in results.items()}
        bars = {name: (r["components"], r["mean"], r["std"]) for name, r in results.items()}
        run.csv("dataset.csv", pd.concat([d.dataset_frame(lm.tokenizer) for d in datasets.values()]))
        run.csv("dla.csv", pd.DataFrame(rows))
        run.csv("dla_check.csv", pd.DataFrame(checks))
        layers = pd.DataFrame([row for r in results.values() for row in r["layers"]])
        run.csv("dla_layers.csv", layers)
        for name, part in layers.groupby("task", sort=False):
            run.figure(
                f"dla_layers_{name}.png",
                plots.curves(
                    {
                        "accumulated (logit lens of the answer direction)": (
                            part.step.to_numpy(),
                            part.accumulated_projection.to_numpy(),
                        ),
                        "written by this stage": (part.step.to_numpy(), part.write_projection.to_numpy()),
                    },
                    f"{name}: the answer-position residual stream through the final norm (frozen scale) onto the answer "
                    "direction, mean over prompts",
                    "residual stream read after each write (resid_mid l: attention l added; resid_post l: MLP l)",
                    "projection (logit difference)",
                    hlines={0.0: ""},
                    xticks=list(part.stage),
                ),
            )
        run.figure(
            "dla_heads.png",
            plots.heatmaps(
                heat,
                "Direct logit attribution per head (mean over prompts)",
                "head",
                "layer",
                "DLA onto the answer direction (logit difference)",
            ),
        )
        run.figure(
            "dla_top.png",
            plots.top_bars(
                bars,
                "Top components by |DLA| (mean over prompts; error bars: ±1 std over prompts)",
                "DLA (logit difference)",
            ),
        )
        print(pd.DataFrame(checks).to_string(index=False, float_format="%.4f"))


def dla_task(lm, name: str, data, opts, bar) -> dict:
    """One task's DLA rows, its check row, and the per-component mean and std over prompts."""
    from lib.core.graph import layer_head
    from lib.methods import intervals
    from lib.methods.dla import direct_logit_attribution

    r = direct_logit_attribution(lm, data, opts.batch_size, progress=bar)
    att = r.attributions.numpy()
    mean, std = att.mean(0), att.std(0, ddof=1) if len(att) > 1 else np.zeros(att.shape[1])
    low, high = intervals.interval(intervals.mean, att.T, n_resamples=opts.n_bootstrap, seed=opts.seed)  # [C] each
    rows = []
    for c, comp in enumerate(r.components):
        layer, head = layer_head(comp)
        rows.append(
            {
                "task": name,
                "component": comp,
                "kind": _kind(comp),
                "layer": layer,
                "head": head,
                "mean": mean[c],
                "std": std[c],
                "mean_ci_low": low[c],
                "mean_ci_high": high[c],
            }
        )
    total = att.sum(1)
    ci = dict(n_resamples=opts.n_bootstrap, seed=opts.seed)
    check = {
        "task": name,
        "n": len(data),
        **intervals.columns("model_logit_diff", intervals.mean, r.model_diff.numpy(), **ci),
        "components_sum": total.mean(),
        "bias_terms": r.bias.mean().item(),
        "residual": (r.model_diff.numpy() - total).mean(),
        "bias_spread": r.bias_spread,
        "max_abs_error": np.abs(r.model_diff.numpy() - total - r.bias.numpy()).max(),
    }
    return {
        "rows": rows,
        "check": check,
        "components": r.components,
        "mean": mean,
        "std": std,
        "layers": layer_rows(lm, name, data, opts),
    }


def layer_rows(lm, name: str, data, opts) -> list[dict]:
    """The answer-position residual stream layer by layer: accumulated projection on the answer direction
    (logit lens, with intervals), what each stage writes, and the norm of that write."""
    from lib.methods import intervals
    from lib.methods.dla import residual_by_layer, stage_names

    r = residual_by_layer(lm, data, opts.batch_size)
    stream, write, norms = (r[k].numpy() for k in ("stream", "write", "norms"))
    low, high = intervals.interval(intervals.mean, stream.T, n_resamples=opts.n_bootstrap, seed=opts.seed)
    rows = []
    for i, stage in enumerate(stage_names(lm.n_layers)):
        kind = "embed" if i == 0 else ("attn" if i % 2 else "mlp")  # what was written to reach this stage
        rows.append(
            {
                "task": name,
                "step": i,
                "stage": stage,
                "written_by": kind,
                "layer": (i - 1) // 2,
                "accumulated_projection": stream[:, i].mean(),
                "accumulated_projection_ci_low": low[i],
                "accumulated_projection_ci_high": high[i],
                "write_projection": write[:, i].mean(),
                "write_projection_std": write[:, i].std(),
                "write_norm": norms[:, i].mean(),
            }
        )
    return rows


def _kind(comp: str) -> str:
    return {"a": "head", "m": "mlp"}.get(comp[0], "embed")


if __name__ == "__main__":
    cli.main(app)
