"""ACDC (Conmy et al. 2023): circuits by pruning edges from the logits backwards at one or more
thresholds, with ROC against the canonical circuit and faithfulness vs edges kept on held-out prompts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import pandas as pd
import typer
from tqdm import tqdm

from lib import cli, plots
from lib.acdc import METRICS, ACDCState, edge_order, kept_mask, run_acdc
from lib.circuits import canonical_circuit
from lib.errors import UserError
from lib.faithfulness import Evaluator, discovery_and_held_out, roc_from_points
from lib.graph import Circuit, graph_of
from lib.patching import ABLATIONS

app = cli.script_app(__doc__)
CHECKPOINT_EVERY = 50  # trials between state saves (and always on Ctrl-C)


@app.command()
def main(tasks: cli.TasksOpt = "all", model: cli.ModelOpt = "gpt2", device: cli.DeviceOpt = "auto",
         dtype: cli.DtypeOpt = "float32", n_prompts: cli.NPromptsOpt = 100, batch_size: cli.BatchOpt = 32,
         seed: cli.SeedOpt = 0, out: cli.OutOpt = Path("results"),
         thresholds: Annotated[str, typer.Option("--thresholds", help="tau values, space-separated")] = "0.01",
         metric: Annotated[str, typer.Option(help="kl (KL(clean || circuit)) | task")] = "kl",
         ablation: Annotated[str, typer.Option(help="resample | mean | zero")] = "resample",
         absolute: Annotated[bool, typer.Option("--absolute", help="threshold |metric change| instead of worsening")] = False,
         resume: Annotated[Optional[Path], typer.Option(help="an interrupted run directory to continue")] = None):
    if resume is not None:  # the interrupted run's own options win
        saved = json.loads((resume / "checkpoint.json").read_text())["options"] if (resume / "checkpoint.json").is_file() else None
        if saved is None:
            raise UserError(f"--resume {resume}: not an interrupted run (no checkpoint.json)")
        tasks, model, device, dtype = " ".join(saved["tasks"]), saved["model"], saved["device"], saved["dtype"]
        n_prompts, batch_size, seed, out = saved["n_prompts"], saved["batch_size"], saved["seed"], Path(saved["out"])
        thresholds, metric, ablation, absolute = " ".join(map(str, saved["thresholds"])), saved["metric"], saved["ablation"], saved["absolute"]
    taus = cli.parse_floats(thresholds, "--thresholds")
    if not taus or any(t < 0 for t in taus):
        raise UserError("--thresholds must be one or more non-negative numbers")
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if ablation not in ABLATIONS:
        raise UserError(f"unknown ablation {ablation!r}; choose from {', '.join(ABLATIONS)}")
    opts = cli.common(tasks, model, device, dtype, n_prompts, batch_size, seed, out)
    extra = dict(thresholds=taus, metric=metric, ablation=ablation, absolute=absolute)
    with cli.experiment("06_acdc", opts, resume=resume, suspendable=True, **extra) as (lm, run):
        checkpoint_path = run.path / "checkpoint.json"
        if resume is None:
            checkpoint_path.write_text(json.dumps({"options": {**run.record["options"]}, "units": {}}, indent=1))
        progress_state = json.loads(checkpoint_path.read_text())
        graph = graph_of(lm)
        rows, datasets = [], []
        for name in opts.tasks:
            discovery, held_out, frame = discovery_and_held_out(name, lm.tokenizer, opts.n_prompts, opts.seed)
            datasets.append(frame)
            ev = Evaluator(lm, graph, held_out, ablation, opts.batch_size)
            reference = canonical_circuit(name, graph, lm.name)
            for tau in taus:
                unit = f"{name}_tau{tau:g}"
                saved = progress_state["units"].get(unit)
                state = ACDCState(**saved["state"]) if saved else None
                if saved and saved.get("done"):
                    rows.append(saved["row"])
                    continue
                t0 = time.time() - (saved or {}).get("seconds", 0.0)

                def checkpoint(st, force=False, _unit=unit, _t0=t0):
                    if force or st.tried % CHECKPOINT_EVERY == 0:
                        progress_state["units"][_unit] = {"state": st.__dict__, "seconds": time.time() - _t0}
                        _write(checkpoint_path, progress_state)

                state = state or ACDCState(tau)
                with tqdm(total=len(edge_order(graph)), desc=f"{name} tau={tau:g}: edges tried", unit="edge") as bar:
                    try:
                        state = run_acdc(lm, graph, discovery, tau, metric, ablation, absolute, opts.batch_size,
                                         state=state, checkpoint=checkpoint, progress=bar)
                    except KeyboardInterrupt:
                        checkpoint(state, force=True)
                        raise
                keep = kept_mask(graph, state)
                circuit = Circuit(lm.name, name, "acdc", {"tau": tau, "metric": metric, "ablation": ablation,
                                                          "absolute": absolute, "n_prompts": len(discovery)},
                                  {e: state.kept.get(e, float("nan")) for e in graph.edges_of(keep)})
                if keep.any():
                    run.json(f"circuit_{unit}.json", circuit.to_json(graph))
                f = ev.faithfulness(keep)
                row = {"task": name, "tau": tau, "metric": metric, "ablation": ablation, "absolute": absolute,
                       "edges_kept": int(keep.sum()), "nodes_kept": len(graph.nodes_of(keep)), "edges_tried": state.tried,
                       "forward_passes": state.forward_passes, "seconds": time.time() - t0,
                       "final_metric_discovery": state.current, "n_held_out": len(held_out),
                       "faithfulness": f["faithfulness"], "faithfulness_median": f["faithfulness_median"],
                       "tpr": np.nan, "fpr": np.nan, "reference_edges": np.nan}
                if reference is not None:
                    exists = graph.edge_exists
                    row.update(tpr=float((keep & reference).sum() / reference.sum()),
                               fpr=float((keep & ~reference & exists).sum() / (~reference & exists).sum()),
                               reference_edges=int(reference.sum()))
                rows.append(row)
                progress_state["units"][unit] = {"state": state.__dict__, "done": True, "row": row}
                _write(checkpoint_path, progress_state)
        sweep = pd.DataFrame(rows)
        run.csv("dataset.csv", pd.concat(datasets))
        run.csv("acdc_sweep.csv", sweep)
        curves = {t: (d.edges_kept.to_numpy(), d.faithfulness.to_numpy()) for t, d in sweep.sort_values("edges_kept").groupby("task", sort=False)}
        run.figure("faithfulness_vs_edges.png", plots.curves(curves, "ACDC circuits: faithfulness on held-out prompts",
                                                             "edges kept", "normalized faithfulness", logx=True))
        with_ref = sweep.dropna(subset=["tpr"])
        if len(with_ref):
            roc_rows, rocs = [], {}
            for t, d in with_ref.groupby("task", sort=False):
                fpr, tpr, auc = roc_from_points(d.fpr, d.tpr)
                rocs[t] = (fpr, tpr, auc)
                roc_rows += [{"task": t, "fpr": a, "tpr": b, "auc": auc} for a, b in zip(fpr, tpr)]
            run.csv("roc.csv", pd.DataFrame(roc_rows))
            run.figure("roc.png", plots.curves({k: (f, t) for k, (f, t, _) in rocs.items()}, "ACDC ROC against the canonical circuit (one point per tau)",
                                               "false positive rate", "true positive rate", diagonal=True,
                                               labels={k: f"{k} (AUC {a:.3f})" for k, (_, _, a) in rocs.items()}))
        print(sweep[["task", "tau", "edges_kept", "edges_tried", "forward_passes", "seconds", "faithfulness"]].to_string(
            index=False, float_format="%.4f"))


def _write(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    tmp.replace(path)


if __name__ == "__main__":
    cli.main(app)
