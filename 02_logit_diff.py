"""The model's behaviour per task: clean and corrupted task metric, accuracy, per-group breakdown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from lib import cli, plots
from lib.evaluate import behaviour

app = cli.script_app(__doc__)


def summary_rows(items: pd.DataFrame, column: str, condition: str, circuit: str = "none") -> list[dict]:
    """Mean, std, median, accuracy (metric > 0) of one metric column, over all items and per group."""
    rows = []
    for (task, group), df in [((t, "all"), d) for t, d in items.groupby("task", sort=False)] + list(
            items.groupby(["task", "group"], sort=True)):
        v = df[column].to_numpy()
        rows.append({"task": task, "circuit": circuit, "condition": condition, "group": group, "n": len(v),
                     "mean": v.mean(), "std": v.std(ddof=1) if len(v) > 1 else 0.0, "median": np.median(v),
                     "accuracy": (v > 0).mean()})
    return rows


@app.command()
def main(tasks: cli.TasksOpt = "all", model: cli.ModelOpt = "gpt2", device: cli.DeviceOpt = "auto",
         dtype: cli.DtypeOpt = "float32", n_prompts: cli.NPromptsOpt = 100, batch_size: cli.BatchOpt = 32,
         seed: cli.SeedOpt = 0, out: cli.OutOpt = Path("results")):
    opts = cli.common(tasks, model, device, dtype, n_prompts, batch_size, seed, out)
    with cli.experiment("02_logit_diff", opts) as (lm, run):
        datasets = cli.task_builds(lm, opts)
        frames = []
        for name, data in tqdm(datasets.items(), desc="tasks", unit="task"):
            frames.append(behaviour(lm, data, opts.batch_size))
        items = pd.concat(frames, ignore_index=True)
        summary = pd.DataFrame(summary_rows(items, "metric_clean", "clean")
                               + summary_rows(items, "metric_corrupted", "corrupted"))
        run.csv("dataset.csv", pd.concat([d.dataset_frame(lm.tokenizer) for d in datasets.values()]))
        run.csv("items.csv", items)
        run.csv("summary.csv", summary)
        run.figure("metric_hist.png", plots.histograms(
            {t: {"clean": d.metric_clean.to_numpy(), "corrupted": d.metric_corrupted.to_numpy()}
             for t, d in items.groupby("task", sort=False)}, "Task metric per prompt", "task metric"))
        overall = summary[summary.group == "all"][["task", "condition", "n", "mean", "std", "accuracy"]]
        print(overall.to_string(index=False, float_format="%.4f"))


if __name__ == "__main__":
    cli.main(app)
