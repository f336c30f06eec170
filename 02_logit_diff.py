"""The model's behaviour per task and the faithfulness of a circuit: clean, corrupted and circuit task
metric, accuracy, normalized faithfulness (ratio of means, median of per-prompt ratios), per group."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lib.io import cli
from lib.io.circuit_option import AblationOpt, CircuitOpt, check_options, circuit_experiment, resolve_with_progress
from lib.io.headline import Metric

if TYPE_CHECKING:
    import pandas as pd

app = cli.script_app(__doc__)
HEADLINE = [
    Metric("clean_mean", "summary.csv", "mean", {"condition": "clean", "group": "all"}),
    Metric("clean_accuracy", "summary.csv", "accuracy", {"condition": "clean", "group": "all"}),
    Metric("corrupted_mean", "summary.csv", "mean", {"condition": "corrupted", "group": "all"}),
    Metric("faithfulness", "summary.csv", "faithfulness", {"condition": "circuit", "group": "all"}),
    Metric("faithfulness_median", "summary.csv", "faithfulness_median", {"condition": "circuit", "group": "all"}),
]


def summary_rows(items: pd.DataFrame, column: str, condition: str, n_bootstrap: int, seed: int) -> list[dict]:
    """Mean, std, median, accuracy (metric > 0) of one metric column, over all items and per group, with 95%
    bootstrap intervals over prompts; for the circuit, normalized faithfulness too (prompts resampled jointly)."""
    from lib.core import metrics
    from lib.methods import intervals

    rows = []
    for (task, group), df in [((t, "all"), d) for t, d in items.groupby("task", sort=False)] + list(
        items.groupby(["task", "group"], sort=True)
    ):
        v = df[column].to_numpy()
        ci = dict(n_resamples=n_bootstrap, seed=seed)
        row = {
            "task": task,
            "circuit": df.circuit.iloc[0],
            "condition": condition,
            "group": group,
            "n": len(v),
            **intervals.columns("mean", intervals.mean, v, **ci),
            "std": v.std(ddof=1) if len(v) > 1 else 0.0,
            **intervals.columns("median", intervals.median, v, **ci),
            **intervals.columns("accuracy", intervals.positive_share, v, **ci),
        }
        for name in ("faithfulness", "faithfulness_median"):
            row |= {name: np.nan, f"{name}_ci_low": np.nan, f"{name}_ci_high": np.nan}
        if condition == "circuit":
            samples = (v, df.metric_clean.to_numpy(), df.metric_corrupted.to_numpy())
            row |= intervals.columns("faithfulness", intervals.ratio_of_means, *samples, **ci)
            row |= intervals.columns("faithfulness_median", metrics.median_of_ratios, *samples, **ci)
        rows.append(row)
    return rows


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
    circuit: CircuitOpt = "auto",
    ablation: AblationOpt = "resample",
    n_bootstrap: cli.NBootstrapOpt = 1000,
    quiet: cli.QuietOpt = False,
    resume: cli.ResumeOpt = None,
):
    check_options(circuit, ablation)
    opts = cli.common(
        tasks, model, device, dtype, n_prompts, batch_size, seed, out, quiet, n_bootstrap, task_metric=task_metric
    )
    # the work's imports, once the options are valid (--help and option errors never pay for them)
    import pandas as pd

    from lib.core.evaluate import behaviour
    from lib.core.metrics import data_metric
    from lib.core.patching import evaluate_mask
    from lib.io import plots
    from lib.io.plots import TASK_METRIC_LABELS

    with circuit_experiment("02_logit_diff", opts, circuit, ablation, resume=resume, headline=HEADLINE) as (
        lm,
        run,
        graph,
        datasets,
    ):

        def task_items(name: str) -> pd.DataFrame:
            data = datasets[name]
            resolved = resolve_with_progress(circuit, lm, graph, name, data, opts, ablation, run)
            items = behaviour(lm, data, opts.batch_size)
            logits = evaluate_mask(lm, graph, data, resolved.keep, ablation, opts.batch_size)
            items["metric_circuit"] = data_metric(logits, data).cpu().numpy()
            if lm.arch.post_norms and ablation == "resample":  # Gemma 2: the gap to EAP-IG's recomputed norms
                from lib.methods.post_norm_gap import faithfulness_gap

                metrics = (items[c].to_numpy() for c in ("metric_clean", "metric_corrupted", "metric_circuit"))
                gap = faithfulness_gap(lm, graph, data, resolved.keep, opts.batch_size, *metrics)
                run.record.setdefault("post_norm_gap", {})[name] = gap
            items.insert(1, "circuit", resolved.label)
            items.insert(2, "circuit_edges", resolved.n_edges)
            return items

        items = pd.concat(cli.per_task(run, opts.tasks, task_items).values(), ignore_index=True)
        boot = (opts.n_bootstrap, opts.seed)
        summary = pd.DataFrame(
            summary_rows(items, "metric_clean", "clean", *boot)
            + summary_rows(items, "metric_corrupted", "corrupted", *boot)
            + summary_rows(items, "metric_circuit", "circuit", *boot)
        )
        run.csv("dataset.csv", pd.concat([d.dataset_frame(lm.tokenizer) for d in datasets.values()]))
        run.csv("items.csv", items)
        run.csv("summary.csv", summary)
        run.figure(
            "metric_hist.png",
            plots.histograms(
                {
                    t: {
                        "clean": d.metric_clean.to_numpy(),
                        "corrupted": d.metric_corrupted.to_numpy(),
                        f"circuit ({d.circuit.iloc[0]})": d.metric_circuit.to_numpy(),
                    }
                    for t, d in items.groupby("task", sort=False)
                },
                "Task metric per prompt",
                {t: TASK_METRIC_LABELS[datasets[t].metric_kind] for t in datasets},
                "prompts",
            ),
        )
        overall = summary[summary.group == "all"][
            [
                "task",
                "circuit",
                "condition",
                "n",
                "mean",
                "mean_ci_low",
                "mean_ci_high",
                "accuracy",
                "faithfulness",
                "faithfulness_ci_low",
                "faithfulness_ci_high",
            ]
        ]
        print(overall.to_string(index=False, float_format="%.4f"))


if __name__ == "__main__":
    cli.main(app)
