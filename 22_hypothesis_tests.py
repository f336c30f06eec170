"""Statistical tests of a circuit (Shi et al. 2024): equivalence to the full model, independence of the model
from the circuit's knockout, minimality of every edge, and sufficiency against random circuits of its size;
p-values, Holm-corrected decisions at --alpha, and plots of the null distributions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from lib.core.errors import UserError
from lib.io import checks, cli, progress
from lib.io.circuit_option import AblationOpt, CircuitOpt, check_options, circuit_experiment, resolve_with_progress
from lib.io.headline import Metric

app = cli.script_app(__doc__)
TESTS = ("equivalence", "independence", "minimality", "sufficiency")
HEADLINE = [Metric(f"{t}_p_value", "tests.csv", "p_value_holm", {"test": t}) for t in TESTS]
NULLS = {  # what rejecting each null means
    "equivalence": "rejected: the circuit is not equivalent to the model (within epsilon)",
    "independence": "rejected: the model's output depends on the knocked-out circuit's (not localized)",
    "minimality": "rejected: some edge is no more needed than a random added edge (not minimal)",
    "sufficiency": "rejected: the circuit is more faithful than the quantile-th random circuit of its size",
}


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
    alpha: Annotated[float, typer.Option(help="significance level (after Holm correction)")] = 0.05,
    epsilon: Annotated[float, typer.Option(help="equivalence tolerance on P(circuit beats model) - 1/2")] = 0.1,
    quantile: Annotated[
        float, typer.Option(help="quantile of random circuits/edges in minimality and sufficiency")
    ] = 0.9,
    n_random: Annotated[
        int, typer.Option("--n-random", help="random circuits (sufficiency) and random inflated circuits (minimality)")
    ] = 100,
    n_permutations: Annotated[int, typer.Option(help="permutations of the independence test")] = 1000,
    max_edges: Annotated[int, typer.Option(help="circuit edges tested for minimality (0: all)")] = 0,
    quiet: cli.QuietOpt = False,
    resume: cli.ResumeOpt = None,
):
    check_options(circuit, ablation)
    for name, v, lo, hi in (("--alpha", alpha, 0, 1), ("--epsilon", epsilon, 0, 0.5), ("--quantile", quantile, 0, 1)):
        checks.check_finite(name, v)
        if not lo < v < hi:
            raise UserError(f"{name} must be strictly between {lo} and {hi} (got {v})")
    checks.check_between(1, 10_000, ("--n-random", n_random))
    checks.check_between(1, 100_000, ("--n-permutations", n_permutations))
    checks.check_at_least(0, ("--max-edges", max_edges))
    if n_prompts < 2:
        raise UserError("the tests need at least 2 prompts (--n-prompts)")
    opts = cli.common(tasks, model, device, dtype, n_prompts, batch_size, seed, out, quiet, task_metric=task_metric)
    # the work's imports, once the options are valid (--help and option errors never pay for them)
    import pandas as pd
    from scipy.stats import binom

    from lib.io import plots
    from lib.methods import hypothesis_tests as ht
    from lib.methods.faithfulness import Evaluator

    settings = dict(
        alpha=alpha,
        epsilon=epsilon,
        quantile=quantile,
        n_random=n_random,
        n_permutations=n_permutations,
        max_edges=max_edges,
    )
    with circuit_experiment(
        "22_hypothesis_tests", opts, circuit, ablation, resume=resume, headline=HEADLINE, **settings
    ) as (lm, run, graph, datasets):

        def test_task(name: str) -> dict:
            data = datasets[name]
            resolved = resolve_with_progress(circuit, lm, graph, name, data, opts, ablation, run)
            if resolved.n_edges == graph.n_edges:
                raise UserError(
                    f"task {name}: the circuit holds every edge of the model, so minimality has no edge "
                    "to add and sufficiency no other circuit of its size; test a proper sub-circuit"
                )
            ev = Evaluator(lm, graph, data, ablation, opts.batch_size)
            m_full, keep = ev.clean, resolved.keep
            m_circuit, m_knockout = ev.metric(keep), ev.metric(graph.edge_exists & ~keep)
            tie = 1e-5 * (1 + float(np.abs(m_full).max()))  # float error of the engine: below this, a tie
            eq = ht.equivalence(m_full, m_circuit, epsilon, tie)
            ind = ht.independence(m_full, m_knockout, n_permutations, opts.seed)
            n_edges = min(resolved.n_edges, max_edges or resolved.n_edges)
            with progress.bar(
                2 * n_random + n_edges, f"{name}: masked evaluations of minimality, sufficiency", "circuit"
            ) as bar:
                mini = ht.minimality(ev.metric, graph, keep, n_random, quantile, opts.seed, max_edges or None, bar)
                suf = ht.sufficiency(ev.metric, graph, keep, m_full, n_random, quantile, opts.seed, bar)
            base = {"task": name, "circuit": resolved.label, "circuit_edges": resolved.n_edges, "n_prompts": len(data)}
            rows = [
                {
                    **base,
                    "test": "equivalence",
                    "statistic_name": "share of prompts where the circuit beats the model",
                    "statistic": eq["statistic"],
                    "p_value": eq["p_value"],
                    "parameter": f"epsilon={epsilon}",
                    "n": eq["n"],
                    "detail": f"{eq['k']} of {eq['n']} non-tied prompts; {eq['ties']} ties (|delta| <= {tie:.3g})",
                },
                {
                    **base,
                    "test": "independence",
                    "statistic_name": "HSIC(model, knocked-out circuit)",
                    "statistic": ind["statistic"],
                    "p_value": ind["p_value"],
                    "parameter": f"permutations={n_permutations}",
                    "n": ind["n"],
                    "detail": "Gaussian kernels, median heuristic per variable",
                },
                {
                    **base,
                    "test": "minimality",
                    "statistic_name": "mean share of random knockouts an edge's knockout exceeds",
                    "statistic": mini["statistic"],
                    "p_value": mini["p_value"],
                    "parameter": f"quantile={quantile}",
                    "n": len(mini["edges"]),
                    "detail": f"smallest Holm-adjusted p over {len(mini['edges'])} edges; "
                    f"{n_random} circuits inflated by random input->logits paths (mean "
                    f"{mini['random_added_edges'].mean():.2f} edges added)",
                },
                {
                    **base,
                    "test": "sufficiency",
                    "statistic_name": "share of random circuits at least as far from the model",
                    "statistic": suf["statistic"],
                    "p_value": suf["p_value"],
                    "parameter": f"quantile={quantile}",
                    "n": suf["n"],
                    "detail": f"circuit distance {suf['circuit_distance']:.4g} (mean squared metric difference); "
                    f"random circuits: unions of random input->logits paths, {suf['random_sizes'].mean():.1f} edges on average "
                    f"(at least {resolved.n_edges})",
                },
            ]
            j = np.arange(eq["n"] + 1)
            nulls = {
                "equivalence": {
                    "pmf": (j / max(eq["n"], 1), binom.pmf(j, eq["n"], 0.5 + epsilon)),
                    "p_value": eq["p_value"],
                    "observed": [(eq["statistic"], "observed share", "C3")],
                    "xlabel": "share of prompts C beats M",
                },
                "independence": {
                    "null": ind["null"],
                    "p_value": ind["p_value"],
                    "null_label": "permuted HSIC",
                    "observed": [(ind["statistic"], "observed HSIC", "C3")],
                    "xlabel": "HSIC",
                },
                "minimality": {
                    "null": mini["random"],
                    "p_value": mini["p_value"],
                    "null_label": "knockouts of a random added edge",
                    "observed": [
                        (r["knockout_distance"], "circuit edge knockouts" if i == 0 else None, "C0")
                        for i, r in enumerate(mini["edges"][:50])
                    ],
                    "positive": True,
                    "xlabel": "knockout distance (mean squared metric change)",
                },
                "sufficiency": {
                    "null": suf["random"],
                    "p_value": suf["p_value"],
                    "null_label": "random connected circuits of at least its size",
                    "observed": [(suf["circuit_distance"], "circuit", "C3")],
                    "positive": True,
                    "xlabel": "distance to the model (mean squared metric difference)",
                },
            }
            run.figure(
                f"null_{name}.png",
                plots.null_distributions(
                    nulls, f"{name}: null distributions of Shi et al.'s tests ({resolved.label}, {ablation} ablation)"
                ),
            )
            return {"rows": rows, "edges": [{"task": name, **r} for r in mini["edges"]]}

        results = cli.per_task(run, opts.tasks, test_task)
        table = pd.DataFrame([r for res in results.values() for r in res["rows"]])
        table["p_value_holm"] = ht.holm(table.p_value)  # one family: every test of every task in this run
        table["alpha"] = alpha
        table["rejected"] = table.p_value_holm < alpha
        table["meaning"] = [NULLS[t] if rej else "not rejected" for t, rej in zip(table.test, table.rejected)]
        run.csv("dataset.csv", pd.concat([d.dataset_frame(lm.tokenizer) for d in datasets.values()]))
        run.csv("tests.csv", table)
        run.csv("minimality_edges.csv", pd.DataFrame([e for res in results.values() for e in res["edges"]]))
        print(
            table[["task", "test", "statistic", "p_value", "p_value_holm", "rejected"]].to_string(
                index=False, float_format="%.4g"
            )
        )


if __name__ == "__main__":
    cli.main(app)
