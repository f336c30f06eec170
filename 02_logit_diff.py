"""The model's behaviour per task and the faithfulness of a circuit: clean, corrupted and circuit task
metric, accuracy, normalized faithfulness (ratio of means, median of per-prompt ratios), per group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from lib import cli, plots
from lib.circuit_option import AblationOpt, CircuitOpt, check_options, circuit_experiment, resolve_with_progress
from lib.evaluate import behaviour
from lib.headline import Metric, extract as headline
from lib.metrics import data_metric, normalized
from lib.patching import evaluate_mask
from lib.plots import TASK_METRIC_LABELS

app = cli.script_app(__doc__)
HEADLINE = [Metric("clean_mean", "summary.csv", "mean", {"condition": "clean", "group": "all"}),
            Metric("clean_accuracy", "summary.csv", "accuracy", {"condition": "clean", "group": "all"}),
            Metric("corrupted_mean", "summary.csv", "mean", {"condition": "corrupted", "group": "all"}),
            Metric("faithfulness", "summary.csv", "faithfulness", {"condition": "circuit", "group": "all"}),
            Metric("faithfulness_median", "summary.csv", "faithfulness_median", {"condition": "circuit", "group": "all"})]


def summary_rows(items: pd.DataFrame, column: str, condition: str) -> list[dict]:
    """Mean, std, median, accuracy (metric > 0) of one metric column, over all items and per group;
    for the circuit, normalized faithfulness too."""
    rows = []
    for (task, group), df in [((t, "all"), d) for t, d in items.groupby("task", sort=False)] + list(
            items.groupby(["task", "group"], sort=True)):
        v = df[column].to_numpy()
        row = {"task": task, "circuit": df.circuit.iloc[0], "condition": condition, "group": group, "n": len(v),
               "mean": v.mean(), "std": v.std(ddof=1) if len(v) > 1 else 0.0, "median": np.median(v),
               "accuracy": (v > 0).mean(), "faithfulness": np.nan, "faithfulness_median": np.nan}
        if condition == "circuit":
            row.update(normalized(v, df.metric_clean.to_numpy(), df.metric_corrupted.to_numpy()))
        rows.append(row)
    return rows


@app.command()
def main(tasks: cli.TasksOpt = "all", model: cli.ModelOpt = "gpt2", device: cli.DeviceOpt = "auto",
         dtype: cli.DtypeOpt = "float32", n_prompts: cli.NPromptsOpt = 100, batch_size: cli.BatchOpt = 32,
         seed: cli.SeedOpt = 0, out: cli.OutOpt = Path("results"), circuit: CircuitOpt = "auto",
         ablation: AblationOpt = "resample", quiet: cli.QuietOpt = False, resume: cli.ResumeOpt = None):
    check_options(circuit, ablation)
    opts = cli.common(tasks, model, device, dtype, n_prompts, batch_size, seed, out, quiet)
    with circuit_experiment("02_logit_diff", opts, circuit, ablation, resume=resume) as (lm, run, graph, datasets):
        def task_items(name: str) -> pd.DataFrame:
            data = datasets[name]
            resolved = resolve_with_progress(circuit, lm, graph, name, data, opts, ablation, run)
            items = behaviour(lm, data, opts.batch_size)
            logits = evaluate_mask(lm, graph, data, resolved.keep, ablation, opts.batch_size)
            items["metric_circuit"] = data_metric(logits, data).cpu().numpy()
            items.insert(1, "circuit", resolved.label)
            items.insert(2, "circuit_edges", resolved.n_edges)
            return items

        items = pd.concat(cli.per_task(run, opts.tasks, task_items).values(), ignore_index=True)
        summary = pd.DataFrame(summary_rows(items, "metric_clean", "clean")
                               + summary_rows(items, "metric_corrupted", "corrupted")
                               + summary_rows(items, "metric_circuit", "circuit"))
        run.csv("dataset.csv", pd.concat([d.dataset_frame(lm.tokenizer) for d in datasets.values()]))
        run.csv("items.csv", items)
        run.csv("summary.csv", summary)
        run.figure("metric_hist.png", plots.histograms(
            {t: {"clean": d.metric_clean.to_numpy(), "corrupted": d.metric_corrupted.to_numpy(),
                 f"circuit ({d.circuit.iloc[0]})": d.metric_circuit.to_numpy()}
             for t, d in items.groupby("task", sort=False)}, "Task metric per prompt",
            {t: TASK_METRIC_LABELS[datasets[t].metric_kind] for t in datasets}, "prompts"))
        run.csv("headline.csv", headline(HEADLINE, run.path))
        overall = summary[summary.group == "all"][["task", "circuit", "condition", "n", "mean", "std", "accuracy",
                                                   "faithfulness", "faithfulness_median"]]
        print(overall.to_string(index=False, float_format="%.4f"))


if __name__ == "__main__":
    cli.main(app)
