"""Causal scrubbing (Chan et al. 2022) of a circuit hypothesis: resample every input the hypothesis says does
not matter, recursively through the treeified graph, and measure how far the output moves.

Rows per task: the hypothesis (published per-node features for a canonical circuit, else the answer
feature), the same circuit with no feature claims (complement-only, a weaker test), and the baseline (every
input resampled), each over --n-seeds resampling seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from lib.core import choices
from lib.core.errors import UserError
from lib.io import checks, cli, progress
from lib.io.circuit_option import CircuitOpt, check_options, circuit_experiment, resolve_with_progress
from lib.io.headline import Metric

if TYPE_CHECKING:
    import pandas as pd

app = cli.script_app(__doc__)
HEADLINE = [
    Metric("kl_mean", "summary.csv", "kl_mean", {"test": "feature hypothesis"}),
    Metric("loss_recovered", "summary.csv", "loss_recovered_ratio_of_means", {"test": "feature hypothesis"}),
    Metric(
        "complement_only_loss_recovered",
        "summary.csv",
        "loss_recovered_ratio_of_means",
        {"test": "complement-only (weaker test)"},
    ),
]
HypothesisOpt = Annotated[
    str,
    typer.Option(
        "--hypothesis",
        help="auto (published per-node features for a "
        "canonical circuit, else answer-feature) | canonical | "
        "answer-feature | whole-prompt",
    ),
]
SeedsOpt = Annotated[int, typer.Option("--n-seeds", help="resampling seeds (the spread is reported)")]
PoolOpt = Annotated[
    int,
    typer.Option(
        "--pool-size",
        help="prompts per task that resampled inputs are drawn from (the first --n-prompts of them are evaluated)",
    ),
]


RATIO_FLOOR = 0.01  # per-prompt ratios need |m_full - m_baseline| >= this fraction of its mean over prompts


def loss_recovered(m: np.ndarray, m_full: np.ndarray, m_base: np.ndarray) -> dict:
    """(m - m_baseline) / (m_full - m_baseline): ratio of means, and the mean and median of per-prompt ratios.
    A prompt whose random baseline prompt behaves like itself (|m_full - m_baseline| below RATIO_FLOOR of
    the mean gap, e.g. an SVA prompt resampled to one of the same number) has no defined ratio."""
    gap = m_full - m_base
    denom = m_full.mean() - m_base.mean()
    ok = np.abs(gap) >= RATIO_FLOOR * np.abs(gap).mean()
    per = np.full(len(m), np.nan)
    per[ok] = (m[ok] - m_base[ok]) / gap[ok]
    return {
        "per_prompt": per,
        "ratio_of_means": float((m.mean() - m_base.mean()) / denom) if abs(denom) > 1e-12 else float("nan"),
        "mean_of_ratios": float(np.nanmean(per)) if ok.any() else float("nan"),
        "median_of_ratios": float(np.nanmedian(per)) if ok.any() else float("nan"),
        "undefined_ratios": int((~ok).sum()),
    }


def seed_rows(items: pd.DataFrame) -> pd.DataFrame:
    """Per task x hypothesis x seed: KL and reverse KL statistics, metrics, loss recovered."""
    import pandas as pd

    rows = []
    for (task, hyp, seed), d in items.groupby(["task", "hypothesis", "seed"], sort=False):
        lr = loss_recovered(d.metric_scrubbed.to_numpy(), d.metric_full.to_numpy(), d.metric_baseline.to_numpy())
        row = {"task": task, "hypothesis": hyp, "test": d.test.iloc[0], "circuit": d.circuit.iloc[0], "seed": seed}
        for m in ("kl", "reverse_kl"):
            v = d[m].to_numpy()
            row |= {
                f"{m}_mean": v.mean(),
                f"{m}_median": np.median(v),
                f"{m}_q25": np.quantile(v, 0.25),
                f"{m}_q75": np.quantile(v, 0.75),
            }
        row |= {
            "metric_full": d.metric_full.mean(),
            "metric_scrubbed": d.metric_scrubbed.mean(),
            "metric_baseline": d.metric_baseline.mean(),
            "loss_recovered_ratio_of_means": lr["ratio_of_means"],
            "loss_recovered_mean_of_ratios": lr["mean_of_ratios"],
            "loss_recovered_median_of_ratios": lr["median_of_ratios"],
            "undefined_ratios": lr["undefined_ratios"],
        }
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_of_seed_ratios(*arrays, axis=-1):
    """Mean over seeds of each seed's loss recovered (ratio of means); arrays = (scrubbed, full, baseline) per seed."""
    from lib.methods import intervals

    return np.mean([intervals.ratio_of_means(*arrays[i : i + 3], axis=axis) for i in range(0, len(arrays), 3)], axis=0)


def summary_rows(
    seeds: pd.DataFrame, items: pd.DataFrame, stats: dict, n_bootstrap: int = 0, seed: int = 0
) -> pd.DataFrame:
    """Per task x hypothesis: mean and spread (std over seeds) of each per-seed statistic; KL quantiles over
    every (prompt, seed); 95% bootstrap intervals over prompts (resampled jointly across seeds) of the KL means
    and of loss recovered."""
    import pandas as pd

    from lib.core.metrics import kl_interpretation
    from lib.methods import intervals
    from lib.methods.hypotheses import BASELINE, COMPLEMENT_ONLY

    rows = []
    for (task, hyp), d in seeds.groupby(["task", "hypothesis"], sort=False):
        it = items[(items.task == task) & (items.hypothesis == hyp)]
        row = {
            "task": task,
            "hypothesis": hyp,
            "test": d.test.iloc[0],
            "circuit": d.circuit.iloc[0],
            "n_seeds": len(d),
            "n_prompts": int(it.item.nunique()),
        }
        by_seed = [g.sort_values("item") for _, g in it.groupby("seed", sort=True)]  # [S] frames over the same prompts
        ci = dict(n_resamples=n_bootstrap, seed=seed)
        for m in ("kl", "reverse_kl"):
            low, high = intervals.interval(intervals.mean, np.mean([g[m].to_numpy() for g in by_seed], axis=0), **ci)
            row |= {
                f"{m}_mean": d[f"{m}_mean"].mean(),
                f"{m}_mean_ci_low": low,
                f"{m}_mean_ci_high": high,
                f"{m}_mean_std": d[f"{m}_mean"].std(ddof=1),
                f"{m}_median": np.median(it[m]),
                f"{m}_q25": np.quantile(it[m], 0.25),
                f"{m}_q75": np.quantile(it[m], 0.75),
            }
        for m in (
            "metric_full",
            "metric_scrubbed",
            "metric_baseline",
            "loss_recovered_ratio_of_means",
            "loss_recovered_mean_of_ratios",
            "loss_recovered_median_of_ratios",
        ):
            row |= {m: d[m].mean(), f"{m}_std": d[m].std(ddof=1)}
            if m == "loss_recovered_ratio_of_means":
                arrays = [
                    g[c].to_numpy() for g in by_seed for c in ("metric_scrubbed", "metric_full", "metric_baseline")
                ]
                row[f"{m}_ci_low"], row[f"{m}_ci_high"] = intervals.interval(_mean_of_seed_ratios, *arrays, **ci)
        s = stats[(task, hyp)]
        row["resampled_fraction"] = s["agreeing_draws_moved"] / s["agreeing_draws"] if s["agreeing_draws"] else np.nan
        row["instances_per_prompt"] = s["instances"] / (len(d) * row["n_prompts"])
        row["baseline"] = "all inputs resampled from random other prompts of the same structure"
        row["interpretation"] = (
            "baseline"
            if row["test"] == BASELINE
            else kl_interpretation(row["kl_mean"])
            + ("; weaker test: no feature claims" if row["test"] == COMPLEMENT_ONLY else "")
        )
        rows.append(row)
    return pd.DataFrame(rows)


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
    hypothesis: HypothesisOpt = "auto",
    n_seeds: SeedsOpt = 3,
    pool_size: PoolOpt = 2000,
    n_bootstrap: cli.NBootstrapOpt = 1000,
    quiet: cli.QuietOpt = False,
    resume: cli.ResumeOpt = None,
):
    check_options(circuit, "resample")
    if hypothesis not in choices.HYPOTHESES:
        raise UserError(f"unknown hypothesis {hypothesis!r}; choose from {', '.join(choices.HYPOTHESES)}")
    checks.check_between(1, 1000, ("--n-seeds", n_seeds))
    checks.check_between(1, cli.MAX_PROMPTS, ("--pool-size", pool_size))
    if pool_size < n_prompts:
        raise UserError(f"--pool-size ({pool_size}) must be at least --n-prompts ({n_prompts})")
    opts = cli.common(
        tasks, model, device, dtype, n_prompts, batch_size, seed, out, quiet, n_bootstrap, task_metric=task_metric
    )
    # the work's imports, once the options are valid (--help and option errors never pay for them)
    import pandas as pd

    from lib.io import plots
    from lib.methods.hypotheses import main_hypothesis

    with circuit_experiment(
        "04_causal_scrubbing",
        opts,
        circuit,
        "resample",
        resume=resume,
        headline=HEADLINE,
        hypothesis=hypothesis,
        n_seeds=n_seeds,
        pool_size=pool_size,
    ) as (lm, run, graph, datasets):
        for name in opts.tasks if hypothesis == "canonical" else []:  # fail before any work
            main_hypothesis(hypothesis, name, graph, graph.edge_exists, "canonical")
        run.record.setdefault("scrubbing", {})
        results = cli.per_task(
            run,
            opts.tasks,
            lambda name: scrub_task(
                lm, graph, run, name, opts, circuit, hypothesis, n_seeds, pool_size, datasets[name]
            ),
        )
        items = pd.concat([r["items"] for r in results.values()], ignore_index=True)
        stats = {k: v for r in results.values() for k, v in r["stats"].items()}
        described = [row for r in results.values() for row in r["described"]]
        seeds = seed_rows(items)
        summary = summary_rows(seeds, items, stats, opts.n_bootstrap, opts.seed)
        run.csv("dataset.csv", pd.concat([r["frame"] for r in results.values()]))
        run.csv("items.csv", items)
        run.csv("seeds.csv", seeds)
        run.csv("summary.csv", summary)
        run.csv(
            "hypothesis.csv", pd.DataFrame(described, columns=["task", "hypothesis", "node", "features", "position"])
        )
        for name in opts.tasks:
            run.figure(f"scrubbing_{name}.png", plots.scrubbing(seeds[seeds.task == name], name))
        print(
            summary[
                [
                    "task",
                    "hypothesis",
                    "kl_mean",
                    "kl_mean_std",
                    "loss_recovered_ratio_of_means",
                    "resampled_fraction",
                    "interpretation",
                ]
            ].to_string(index=False, float_format="%.4f")
        )


def scrub_task(
    lm, graph, run, name: str, opts, circuit: str, hypothesis: str, n_seeds: int, pool_size: int, evaluation=None
) -> dict:
    """One task: per-prompt rows of every hypothesis and seed, draw statistics, the claims tested."""
    import pandas as pd

    from lib.core.forward import answer_logits
    from lib.core.metrics import data_metric, kl_divergence, reverse_kl
    from lib.methods.hypotheses import COMPLEMENT_ONLY, baseline, complement_only, main_hypothesis
    from lib.methods.scrubbing import Pool, draw, scrubbed_logits
    from tasks import TASKS

    discovery = None if evaluation is None else evaluation.discovery
    if discovery is None:
        pool = Pool.of(TASKS[name].build(lm.tokenizer, pool_size, opts.seed), TASKS[name])
    else:  # a task file split for --circuit auto (circuit_experiment): draws come from its held-out rows only
        pool = Pool.of(evaluation, TASKS[name])
    n_prompts = min(opts.n_prompts, len(pool))
    data = pool.data.subset(slice(0, n_prompts))
    data.discovery = discovery
    resolved = resolve_with_progress(circuit, lm, graph, name, data, opts, "resample", run)
    hyps = [main_hypothesis(hypothesis, name, graph, resolved.keep, resolved.label)]
    if hyps[0].kind != COMPLEMENT_ONLY:
        hyps.append(complement_only(resolved.keep))
    hyps.append(baseline(graph))
    full = answer_logits(lm, data.clean, data.answer_pos, opts.batch_size)
    m_full = data_metric(full, data).cpu().numpy()
    eval_idx = np.arange(n_prompts)
    items, stats = [], {}
    with progress.bar(n_seeds * len(hyps) * n_prompts, f"{name}: scrubbed prompts", "prompt") as bar:
        for k in range(n_seeds):
            scrubbed = {}
            for hyp in hyps:
                logits, st = scrubbed_logits(
                    lm, graph, pool, hyp, draw(graph, pool, hyp, opts.seed, k), eval_idx, opts.batch_size, bar
                )
                scrubbed[hyp.label] = logits
                acc = stats.setdefault((name, hyp.label), dict.fromkeys(st, 0))
                for key, v in st.items():
                    acc[key] += v
            m_base = data_metric(scrubbed[hyps[-1].label], data).cpu().numpy()
            for hyp in hyps:
                m = data_metric(scrubbed[hyp.label], data).cpu().numpy()
                items.append(
                    pd.DataFrame(
                        {
                            "task": name,
                            "circuit": resolved.label,
                            "circuit_edges": resolved.n_edges,
                            "hypothesis": hyp.label,
                            "test": hyp.kind,
                            "seed": k,
                            "item": eval_idx,
                            "group": data.info["group"].to_numpy(),
                            "kl": kl_divergence(full, scrubbed[hyp.label]).cpu().numpy(),
                            "reverse_kl": reverse_kl(full, scrubbed[hyp.label]).cpu().numpy(),
                            "metric_full": m_full,
                            "metric_scrubbed": m,
                            "metric_baseline": m_base,
                            "loss_recovered": loss_recovered(m, m_full, m_base)["per_prompt"],
                        }
                    )
                )
    described = [{"task": name, "hypothesis": hyp.label, **row} for hyp in hyps[:-1] for row in hyp.describe(graph)]
    run.record["scrubbing"][name] = {
        "pool_size": len(pool),
        "n_evaluated": n_prompts,
        "seeds": n_seeds,
        "hypotheses": {h.label: {"test": h.kind, **stats[(name, h.label)]} for h in hyps},
    }
    return {
        "items": pd.concat(items, ignore_index=True),
        "stats": stats,
        "described": described,
        "frame": data.dataset_frame(lm.tokenizer),
    }


if __name__ == "__main__":
    cli.main(app)
