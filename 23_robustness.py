"""How much one circuit's faithfulness depends on methodological choices (Miller et al. 2024): ablation
(resample, mean, zero), corruption (each task's alternatives), edge vs node patching, positions patched (all,
or only those the task's structure names), and the metric (task metric, probability of the correct answers,
KL). Every combination, with 95% intervals, its range per task, a heatmap and a one-line verdict."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lib.io import cli, progress
from lib.io.circuit_option import CircuitOpt, check_options, circuit_experiment, resolve_with_progress
from lib.io.headline import Metric

if TYPE_CHECKING:
    import pandas as pd

app = cli.script_app(__doc__)
HEADLINE = [
    Metric("faithfulness_default", "robustness_summary.csv", "default_faithfulness"),
    Metric("faithfulness_range", "robustness_summary.csv", "range"),
]
DISCOVERY_ABLATION = "resample"  # what --circuit auto discovers with; the grid then varies it


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
    n_bootstrap: cli.NBootstrapOpt = 1000,
    quiet: cli.QuietOpt = False,
    resume: cli.ResumeOpt = None,
):
    check_options(circuit, DISCOVERY_ABLATION)
    opts = cli.common(
        tasks, model, device, dtype, n_prompts, batch_size, seed, out, quiet, n_bootstrap, task_metric=task_metric
    )
    # the work's imports, once the options are valid (--help and option errors never pay for them)
    import pandas as pd

    from lib.io import plots

    with circuit_experiment("23_robustness", opts, circuit, DISCOVERY_ABLATION, resume=resume, headline=HEADLINE) as (
        lm,
        run,
        graph,
        datasets,
    ):
        results = cli.per_task(
            run, opts.tasks, lambda name: robustness_task(lm, graph, run, name, datasets[name], opts, circuit)
        )
        grid = pd.concat([r["rows"] for r in results.values()], ignore_index=True)
        summary = pd.DataFrame([r["verdict"] for r in results.values()])
        run.csv("dataset.csv", pd.concat([r["frame"] for r in results.values()]))
        run.csv("robustness.csv", grid)
        run.csv("robustness_summary.csv", summary)
        run.record["not_applicable"] = {name: r["not_applicable"] for name, r in results.items() if r["not_applicable"]}
        labels, values = one_factor_view(grid, list(results))
        run.figure(
            "robustness_heatmap.png",
            plots.matrix(
                values,
                labels,
                list(results),
                "Circuit faithfulness under one change from the default choices\n"
                "(default: resample / first corruption / edges / all positions / task metric)",
                "normalized faithfulness (1 = full model, 0 = empty circuit)",
                vmin=min(0.0, np.nanmin(values)),
                vmax=max(1.0, np.nanmax(values)),
            ),
        )
        for line in summary.line:
            print(line)


def robustness_task(lm, graph, run, name: str, data, opts, circuit: str) -> dict:
    """One task: the circuit (resolved on the default corruption's prompts) under every setting."""
    import pandas as pd

    from lib.methods import robustness
    from tasks import TASKS

    task = TASKS[name]
    resolved = resolve_with_progress(circuit, lm, graph, name, data, opts, DISCOVERY_ABLATION, run)
    datasets = {task.corruptions[0]: data} | {
        c: task.build(lm.tokenizer, opts.n_prompts, opts.seed, corruption=c) for c in task.corruptions[1:]
    }
    n_settings = len(robustness.grid(task, list(datasets), task.positions is not None))
    with progress.bar(n_settings, f"{name}: settings", "setting") as bar:
        rows = robustness.evaluate(
            lm, graph, task, datasets, resolved.keep, opts.batch_size, opts.n_bootstrap, opts.seed, progress=bar
        )
    frame = pd.DataFrame(rows)
    frame.insert(0, "task", name)
    frame.insert(1, "circuit", resolved.label)
    frames = pd.concat([d.dataset_frame(lm.tokenizer).assign(corruption=c) for c, d in datasets.items()])
    return {
        "rows": frame,
        "verdict": robustness.verdict(name, rows),
        "frame": frames,
        "not_applicable": ([] if task.positions else ["positions=named: the task names no token positions"])
        + ([] if len(task.corruptions) > 1 else ["corruption=second: the task has one corruption (a task file)"]),
    }


def one_factor_view(grid: pd.DataFrame, tasks: list[str]) -> tuple[list[str], np.ndarray]:
    """Rows: the default setting, then each choice changed alone; columns: tasks (nan where not defined)."""
    from lib.methods import robustness

    default = {"ablation": "resample", "level": "edges", "positions": "all", "metric": "task"}
    labels, table = ["default"], []
    alternatives = (
        [("ablation", a) for a in ("mean", "zero")]
        + [("level", "nodes"), ("positions", "named")]
        + [("metric", m) for m in robustness.METRICS[1:]]
        + [("corruption", None)]
    )
    for factor, value in alternatives:
        labels.append(f"{factor}={value}" if value else "corruption=second")
    for task in tasks:
        rows = grid[grid.task == task]
        first = rows.corruption.iloc[0]
        column = []
        for factor, value in [(None, None)] + alternatives:
            want = {**default, "corruption": first}
            if factor == "corruption":
                others = [c for c in rows.corruption.unique() if c != first]
                want["corruption"] = others[0] if others else None
            elif factor:
                want[factor] = value
            match = rows
            for k, v in want.items():
                match = match[match[k] == v]
            column.append(float(match.faithfulness.iloc[0]) if len(match) else np.nan)
        table.append(column)
    return labels, np.array(table).T


if __name__ == "__main__":
    cli.main(app)
