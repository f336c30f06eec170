"""Path patching (Wang et al. 2022): the effect of each sender's output, taken from the other prompt, on the
task metric only through chosen receivers (`--receivers`), along direct residual edges or also through MLPs,
in both directions; layer x head maps per receiver set and a sender x receiver matrix for scans."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from lib.core import choices
from lib.core.errors import UserError
from lib.io import checks, cli, progress
from lib.io.headline import Metric

if TYPE_CHECKING:
    import pandas as pd

app = cli.script_app(__doc__)
HEADLINE = [
    Metric(
        "strongest_sender_{path}_{direction}",
        "path_patching.csv",
        by=("path", "direction"),
        fn=lambda d: float(d.change.iloc[np.argmax(np.abs(d.change.to_numpy()))]),
    )
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
    receivers: Annotated[
        str,
        typer.Option(
            "--receivers",
            help="space-separated: receivers (a9.h9<q>, m10, "
            "logits), nodes (a9.h9: its q, k and v), canonical groups "
            "(name-movers<q>, s-inhibition<v>) or scans (all-heads<q|k|v>)",
        ),
    ] = "logits",
    senders: Annotated[str, typer.Option("--senders", help="space-separated heads and MLPs (default: all)")] = "",
    path: Annotated[str, typer.Option("--path", help="direct | through-mlps | both")] = "both",
    direction: Annotated[str, typer.Option("--direction", help="noise | denoise | both")] = "both",
    rows_per_pass: cli.RowsPerPassOpt = None,
    n_bootstrap: cli.NBootstrapOpt = 1000,
    quiet: cli.QuietOpt = False,
    resume: cli.ResumeOpt = None,
):
    paths: list[str] = list(choices.PATHS) if path == "both" else [path]
    directions: list[str] = list(choices.PATH_DIRECTIONS) if direction == "both" else [direction]
    if any(p not in choices.PATHS for p in paths):
        raise UserError(f"unknown --path {path!r}; choose from direct, through-mlps, both")
    if any(d not in choices.PATH_DIRECTIONS for d in directions):
        raise UserError(f"unknown --direction {direction!r}; choose from noise, denoise, both")
    if not receivers.split():
        raise UserError("--receivers needs at least one receiver, node, group or scan")
    checks.check_rows_per_pass(rows_per_pass)
    opts = cli.common(
        tasks, model, device, dtype, n_prompts, batch_size, seed, out, quiet, n_bootstrap, task_metric=task_metric
    )
    # the work's imports, once the options are valid (--help and option errors never pay for them)
    import pandas as pd

    from lib.core.graph import graph_of
    from lib.methods.receivers import parse_receivers, parse_senders

    with cli.experiment(
        "07_path_patching",
        opts,
        resume=resume,
        headline=HEADLINE,
        receivers=receivers,
        senders=senders,
        path=path,
        direction=direction,
        rows_per_pass=rows_per_pass,
    ) as (lm, run):
        graph = graph_of(lm)
        sender_rows = parse_senders(senders, graph)
        sets = {name: parse_receivers(receivers, graph, name, lm.name) for name in opts.tasks}  # refuse early
        datasets = cli.task_builds(lm, opts)
        results = cli.per_task(
            run,
            opts.tasks,
            lambda name: path_task(
                lm,
                graph,
                name,
                datasets[name],
                sets[name],
                sender_rows,
                paths,
                directions,
                opts,
                rows_per_pass or lm.rows_per_pass,
            ),
        )
        frame = pd.DataFrame([row for r in results.values() for row in r])
        run.csv("dataset.csv", pd.concat([d.dataset_frame(lm.tokenizer) for d in datasets.values()]))
        run.csv("path_patching.csv", frame)
        write_figures(run, lm, frame)
        shown = frame.assign(a=frame.change.abs())
        print(
            shown.sort_values("a", ascending=False)
            .groupby(["task", "path", "direction"], sort=False)
            .head(3)[["task", "path", "direction", "sender", "receivers", "effect", "change"]]
            .to_string(index=False, float_format="%.3f")
        )


def path_task(
    lm,
    graph,
    name: str,
    data,
    receiver_sets: list,
    sender_rows: list[int],
    paths: list[str],
    directions: list[str],
    opts,
    rows_per_pass: int,
) -> list[dict]:
    """Rows: every sender x receiver set x path x direction, normalized metric with 95% intervals."""
    from lib.core.evaluate import behaviour
    from lib.core.graph import layer_head
    from lib.methods import intervals
    from lib.methods.path_patching import PathPatcher

    base = behaviour(lm, data, opts.batch_size)
    clean, corrupt = base.metric_clean.to_numpy(), base.metric_corrupted.to_numpy()
    per_pass = max(1, rows_per_pass // min(opts.batch_size, len(data)))
    rows = []
    n_batches = -(-len(data) // opts.batch_size)
    total = len(receiver_sets) * len(paths) * len(directions) * n_batches * len(sender_rows)
    metric = {}  # (receiver set, path, direction) -> list of [senders, B] per batch
    with progress.bar(total, f"{name}: path patching", "sender") as bar:
        for start in range(0, len(data), opts.batch_size):
            batch = data.subset(slice(start, start + opts.batch_size))
            for direction in directions:
                patcher = PathPatcher(lm, graph, batch, direction)  # source outputs once per batch and direction
                for s0 in range(0, len(sender_rows), per_pass):
                    senders = sender_rows[s0 : s0 + per_pass]
                    for k, (_label, _scan, mask) in enumerate(receiver_sets):  # MLP changes once per sender chunk
                        for path in paths:
                            metric.setdefault((k, path, direction), []).append(
                                (start, s0, patcher.metrics(senders, mask, path))
                            )
                            bar.update(len(senders))
    for (k, path, direction), pieces in metric.items():
        label, scan, _ = receiver_sets[k]
        per_item = np.zeros((len(sender_rows), len(data)))
        for start, s0, m in pieces:
            per_item[s0 : s0 + m.shape[0], start : start + m.shape[1]] = m.numpy()
        r = intervals.normalized_columns(per_item, clean, corrupt, opts.n_bootstrap, opts.seed)
        for i, s in enumerate(sender_rows):
            sender = graph.sources[s]
            layer, head = layer_head(sender)
            rows.append(
                {
                    "task": name,
                    "sender": sender,
                    "sender_kind": "head" if head >= 0 else "mlp",
                    "layer": layer,
                    "head": head,
                    "receivers": label,
                    "scan": scan,
                    "path": path,
                    "direction": direction,
                    "n": len(data),
                    "metric": r["metric"][i],
                    "metric_ci_low": r["metric_ci_low"][i],
                    "metric_ci_high": r["metric_ci_high"][i],
                    "effect": r["normalized"][i],
                    "effect_ci_low": r["normalized_ci_low"][i],
                    "effect_ci_high": r["normalized_ci_high"][i],
                    "change": r["normalized"][i] - (direction == "noise"),
                }
            )
    return rows


def write_figures(run, lm, frame: pd.DataFrame) -> None:
    """A layer x head map of sender effects per receiver set (panels: task, path, direction); a sender x
    receiver matrix per scan."""
    from lib.io import plots

    L, H = lm.n_layers, lm.n_heads
    meaning = (
        "(change of the normalized metric from the base run: 0 = no effect;\nnoise -1 = the path carries the "
        "whole corrupted effect, denoise +1 = it restores the clean behaviour)"
    )
    heads = frame[frame.sender_kind == "head"]
    for i, (label, part) in enumerate(heads[heads.scan == ""].groupby("receivers", sort=False)):
        panels = {}
        for (task, path, direction), g in part.groupby(["task", "path", "direction"], sort=False):
            grid = np.full((L, H), np.nan)
            grid[g["layer"].to_numpy(), g["head"].to_numpy()] = g["change"].to_numpy()
            panels[f"{task} {path} {direction}"] = grid
        if panels:
            run.figure(
                f"path_patching_{i}_{_slug(str(label))}.png",
                plots.heatmaps(
                    panels,
                    f"Path patching of each head to {label}\n{meaning}",
                    "sender head",
                    "sender layer",
                    "change of normalized metric",
                ),
            )
    for scan, part in frame[frame.scan != ""].groupby("scan", sort=False):
        for (task, path, direction), g in part.groupby(["task", "path", "direction"], sort=False):
            table = g.pivot(index="sender", columns="receivers", values="change")
            table = table.loc[list(dict.fromkeys(g.sender)), list(dict.fromkeys(g.receivers))]
            run.figure(
                f"path_scan_{_slug(str(scan))}_{task}_{path}_{direction}.png",
                plots.heatmaps(
                    {f"{task} {path} {direction}": table.to_numpy()},
                    f"Path patching scan {scan}: sender x receiver\n{meaning}",
                    "receiver",
                    "sender",
                    "change of normalized metric",
                    xticklabels=list(table.columns),
                    yticklabels=list(table.index),
                ),
            )


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text).strip("_")


if __name__ == "__main__":
    cli.main(app)
