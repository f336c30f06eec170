"""Direct logit attribution per embedding, attention head and MLP, onto each task's answer direction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from lib import cli, plots
from lib.dla import direct_logit_attribution

app = cli.script_app(__doc__)


@app.command()
def main(tasks: cli.TasksOpt = "all", model: cli.ModelOpt = "gpt2", device: cli.DeviceOpt = "auto",
         dtype: cli.DtypeOpt = "float32", n_prompts: cli.NPromptsOpt = 100, batch_size: cli.BatchOpt = 32,
         seed: cli.SeedOpt = 0, out: cli.OutOpt = Path("results")):
    opts = cli.common(tasks, model, device, dtype, n_prompts, batch_size, seed, out)
    with cli.experiment("01_dla", opts) as (lm, run):
        datasets = cli.task_builds(lm, opts)
        rows, checks, heat, bars = [], [], {}, {}
        with tqdm(total=sum(map(len, datasets.values())), desc="DLA", unit="prompt") as bar:
            for name, data in datasets.items():
                r = direct_logit_attribution(lm, data, opts.batch_size, progress=bar)
                att = r.attributions.numpy()
                mean, std = att.mean(0), att.std(0, ddof=1) if len(att) > 1 else np.zeros(att.shape[1])
                for c, comp in enumerate(r.components):
                    layer, head = _layer_head(comp)
                    rows.append({"task": name, "component": comp, "kind": _kind(comp), "layer": layer,
                                 "head": head, "mean": mean[c], "std": std[c]})
                total = att.sum(1)
                checks.append({"task": name, "n": len(data), "model_logit_diff": r.model_diff.mean().item(),
                               "components_sum": total.mean(), "bias_terms": r.bias.mean().item(),
                               "residual": (r.model_diff.numpy() - total).mean(),
                               "max_abs_error": np.abs(r.model_diff.numpy() - total - r.bias.numpy()).max()})
                L, H = lm.n_layers, lm.n_heads
                heat[name] = mean[1:1 + L * H].reshape(L, H)
                bars[name] = (r.components, mean, std)
        run.csv("dataset.csv", pd.concat([d.dataset_frame(lm.tokenizer) for d in datasets.values()]))
        run.csv("dla.csv", pd.DataFrame(rows))
        run.csv("dla_check.csv", pd.DataFrame(checks))
        run.figure("dla_heads.png", plots.heatmaps(heat, "Direct logit attribution per head (mean over prompts)",
                                                   "head", "layer", "logit difference"))
        run.figure("dla_top.png", plots.top_bars(bars, "Top components by |DLA|", "logit difference"))
        print(pd.DataFrame(checks).to_string(index=False, float_format="%.4f"))


def _layer_head(comp: str) -> tuple[int, int]:
    if comp.startswith("a"):
        layer, head = comp[1:].split(".h")
        return int(layer), int(head)
    return (int(comp[1:]), -1) if comp.startswith("m") else (-1, -1)


def _kind(comp: str) -> str:
    return {"a": "head", "m": "mlp"}.get(comp[0], "embed")


if __name__ == "__main__":
    cli.main(app)
