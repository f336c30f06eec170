"""Output-distribution faithfulness of a circuit: KL, reverse KL, Jensen-Shannon, total variation between the
full model and the circuit (everything outside it ablated), and normalized logit-difference faithfulness."""

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
    Metric("kl_mean", "summary.csv", "mean", {"metric": "kl"}),
    Metric("js_mean", "summary.csv", "mean", {"metric": "js"}),
    Metric("tv_mean", "summary.csv", "mean", {"metric": "tv"}),
    Metric("faithfulness", "summary.csv", "ratio_of_means", {"metric": "logit_diff_faithfulness"}),
]
MODE_DROPPING_RATIO = 0.1  # JS below this fraction of KL reads as mode-dropping (project convention)


def interpretation(kl_mean: float, js_mean: float) -> str:
    from lib.core.metrics import kl_interpretation

    text = kl_interpretation(kl_mean)
    if kl_mean > 0 and js_mean < MODE_DROPPING_RATIO * kl_mean:
        text += "; JS << KL: mode-dropping dominates over hallucinated mass"
    return text


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

    from lib.io import plots

    with circuit_experiment("21_output_variants", opts, circuit, ablation, resume=resume, headline=HEADLINE) as (
        lm,
        run,
        graph,
        datasets,
    ):
        results = cli.per_task(
            run, opts.tasks, lambda name: variants_task(lm, graph, run, name, datasets[name], opts, circuit, ablation)
        )
        items = pd.concat([r["items"] for r in results.values()], ignore_index=True)
        summary = pd.DataFrame([row for r in results.values() for row in r["summary"]])
        spread = pd.DataFrame([r["spread"] for r in results.values()])
        summary = summary.merge(spread[["task", "interpretation"]], on="task")
        run.csv("dataset.csv", pd.concat([d.dataset_frame(lm.tokenizer) for d in datasets.values()]))
        run.csv("items.csv", items)
        run.csv("summary.csv", summary)
        run.csv("spread.csv", spread)
        run.figure("metrics_by_task.png", metrics_figure(summary, list(datasets), ablation))
        run.figure(
            "kl_vs_js.png",
            plots.scatter(
                {t: (d.kl.to_numpy(), d.js.to_numpy()) for t, d in items.groupby("task", sort=False)},
                "Per-prompt KL vs JS (one dot per prompt)",
                "KL(full || circuit), nats (symlog)",
                "JS(full, circuit), nats (symlog)",
                loglog=True,
            ),
        )
        print(
            spread[["task", "circuit", "kl_mean", "js_mean", "interpretation"]].to_string(
                index=False, float_format="%.4f"
            )
        )


def metrics_figure(summary: pd.DataFrame, tasks: list[str], ablation: str):
    """Per task: KL and reverse KL (unbounded, nats), JS and TV (bounded) and normalized faithfulness, each in its
    own panel so the bounded ones do not vanish beside KL; error bars are the 95 % intervals."""
    from lib.io import plots

    def table(column: str, metrics: list[str]) -> pd.DataFrame:
        return summary.pivot(index="task", columns="metric", values=column).loc[tasks, metrics]

    unbounded, bounded = ["kl", "reverse_kl"], ["js", "tv"]  # KL has no upper bound; JS <= ln 2, TV <= 1
    faith = summary[summary.metric == "logit_diff_faithfulness"].set_index("task").loc[tasks]
    cols = {"ratio_of_means": "ratio of means (headline)", "median": "median of per-prompt ratios"}
    return plots.grouped_bars(
        {
            "KL, reverse KL (mean over prompts)": (
                table("mean", unbounded),
                "nats (unbounded)",
                (table("mean_ci_low", unbounded), table("mean_ci_high", unbounded)),
            ),
            "JS, TV (mean over prompts)": (
                table("mean", bounded),
                "JS: nats (at most ln 2); TV: in [0, 1]",
                (table("mean_ci_low", bounded), table("mean_ci_high", bounded)),
            ),
            "normalized logit-difference faithfulness": (
                faith[list(cols)].rename(columns=cols),
                "1 = full model, 0 = corrupted",
                (
                    faith[[f"{c}_ci_low" for c in cols]].set_axis(list(cols.values()), axis=1),
                    faith[[f"{c}_ci_high" for c in cols]].set_axis(list(cols.values()), axis=1),
                ),
            ),
        },
        f"Circuit vs full model ({ablation} ablation; error bars: 95% bootstrap intervals over prompts)",
    )


def rank_correlation(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rho over the items where both are finite; nan (not an error) when either is constant, as
    when a circuit of every edge gives zero divergence on every item."""
    from scipy.stats import spearmanr

    ok = np.isfinite(a.to_numpy()) & np.isfinite(b.to_numpy())
    x, y = a.to_numpy()[ok], b.to_numpy()[ok]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def variants_task(lm, graph, run, name: str, data, opts, circuit: str, ablation: str) -> dict:
    """One task: per-prompt divergences and faithfulness, their summaries, and the spread across metrics."""
    import pandas as pd

    from lib.core.forward import answer_logits
    from lib.core.metrics import DIVERGENCES, data_metric, summarize
    from lib.core.patching import evaluate_mask
    from lib.methods import intervals

    resolved = resolve_with_progress(circuit, lm, graph, name, data, opts, ablation, run)
    full = answer_logits(lm, data.clean, data.answer_pos, opts.batch_size)
    corrupt = answer_logits(lm, data.corrupt, data.answer_pos, opts.batch_size)
    circ = evaluate_mask(lm, graph, data, resolved.keep, ablation, opts.batch_size)
    per = pd.DataFrame({k: fn(full, circ).cpu().numpy() for k, fn in DIVERGENCES.items()})
    m_full, m_corrupt, m_circ = (data_metric(x, data).cpu().numpy() for x in (full, corrupt, circ))
    denom = np.where(np.abs(m_full - m_corrupt) > 1e-12, m_full - m_corrupt, np.nan)
    per["logit_diff_faithfulness"] = (m_circ - m_corrupt) / denom
    per.insert(0, "task", name)
    per.insert(1, "circuit", resolved.label)
    per.insert(2, "item", np.arange(len(data)))
    per.insert(3, "group", data.info["group"].to_numpy())
    per["metric_full"], per["metric_corrupted"], per["metric_circuit"] = m_full, m_corrupt, m_circ
    summary, ci = [], dict(n_resamples=opts.n_bootstrap, seed=opts.seed)
    for metric in list(DIVERGENCES) + ["logit_diff_faithfulness"]:
        v = per[metric].to_numpy()
        finite = v[np.isfinite(v)]
        row = {
            "task": name,
            "circuit": resolved.label,
            "circuit_edges": resolved.n_edges,
            "ablation": ablation,
            "metric": metric,
            "n": len(finite),
            **summarize(finite),
            **intervals.columns("mean", intervals.mean, finite, **ci),
            **intervals.columns("median", intervals.median, finite, **ci),
            "ratio_of_means": np.nan,
            "ratio_of_means_ci_low": np.nan,
            "ratio_of_means_ci_high": np.nan,
        }
        if metric == "logit_diff_faithfulness":  # worst = lowest faithfulness; the headline is the ratio of means
            row["worst5"] = finite[finite <= np.quantile(finite, 0.05)].mean()
            row |= intervals.columns("ratio_of_means", intervals.ratio_of_means, m_circ, m_full, m_corrupt, **ci)
        summary.append(row)
    kl_mean, js_mean = per.kl.mean(), per.js.mean()
    spread = {
        "task": name,
        "circuit": resolved.label,
        "kl_mean": kl_mean,
        "js_mean": js_mean,
        "js_over_kl": js_mean / kl_mean if kl_mean > 0 else np.nan,
        "reverse_kl_over_kl": per.reverse_kl.mean() / kl_mean if kl_mean > 0 else np.nan,
        "spearman_kl_js": rank_correlation(per.kl, per.js),
        "spearman_kl_tv": rank_correlation(per.kl, per.tv),
        "spearman_kl_logit_diff_faithfulness": rank_correlation(per.kl, per.logit_diff_faithfulness),
        "interpretation": interpretation(kl_mean, js_mean),
    }
    return {"items": per, "summary": summary, "spread": spread}


if __name__ == "__main__":
    cli.main(app)
