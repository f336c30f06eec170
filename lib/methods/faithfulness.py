"""Circuit faithfulness: splits of prompts, the faithfulness of a kept-edge mask, curves, ROC against a
reference circuit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from lib.core.errors import UserError
from lib.core.evaluate import behaviour
from lib.core.graph import Graph
from lib.core.metrics import data_metric, median_of_ratios, normalized
from lib.core.patching import AblationCache, evaluate_mask, masks_metric
from lib.methods import intervals

if TYPE_CHECKING:
    import pandas as pd

    from tasks.base import TaskData


def split_indices(data, n_first: int) -> tuple[list[int], list[int]]:
    """(the first n_first items, the rest minus any item whose clean prompt also occurs in the first part)."""
    seen = set(data.info.clean_text[:n_first])
    return list(range(n_first)), [i for i in range(n_first, len(data)) if data.info.clean_text[i] not in seen]


MIN_SPLIT_PROMPTS = 4  # two prompts to discover a circuit on and two to evaluate it (an interval needs two)


@dataclass
class Split:
    """Discovery and held-out prompts of one task, disjoint, and what run.json records of the split."""

    discovery: TaskData
    held_out: TaskData
    frame: pd.DataFrame  # both parts' dataset rows, with a `split` column
    record: dict  # counts, rows (a file's data rows, 1-based; else generated item numbers), halved or not

    @property
    def halved(self) -> bool:
        return self.record["halved"]


def _rows(data, idx: list[int]) -> list[int]:
    """Items idx as a reader finds them: a task file's data rows (1-based), else the generated item numbers."""
    return [int(data.info["file_row"][i]) for i in idx] if "file_row" in data.info else idx


def discovery_and_held_out(task: str, tokenizer, n: int, seed: int) -> Split:
    """n discovery prompts and up to n held-out prompts disjoint from them (a prompt in both is dropped from
    held-out). A task file with fewer than 2n usable rows is split in halves, first half discovery; one with
    fewer than MIN_SPLIT_PROMPTS is refused, naming the count."""
    import pandas as pd

    from tasks import TASKS

    data = TASKS[task].build(tokenizer, 2 * n, seed)
    halved = len(data) < 2 * n
    if halved and len(data) < MIN_SPLIT_PROMPTS:
        raise UserError(
            f"task {task}: {len(data)} usable prompt(s); discovering a circuit on some prompts and evaluating it "
            f"on others needs at least {MIN_SPLIT_PROMPTS} (2 and 2)"
        )
    first, rest = split_indices(data, (len(data) + 1) // 2 if halved else n)
    discovery, held_out = data.subset(first), data.subset(rest)
    if len(held_out) < 2:
        raise UserError(
            f"task {task}: its {len(discovery)} discovery prompts leave {len(held_out)} distinct prompt(s) to "
            f"evaluate on; at least 2 are needed ({MIN_SPLIT_PROMPTS} distinct prompts in all)"
        )
    frame = pd.concat(
        [
            discovery.dataset_frame(tokenizer).assign(split="discovery"),
            held_out.dataset_frame(tokenizer).assign(split="held-out"),
        ]
    )
    record = {
        "usable_prompts": len(data),
        "n_prompts_option": n,
        "halved": halved,
        "n_discovery": len(discovery),
        "n_held_out": len(held_out),
        "rows_are": "file data rows, 1-based" if "file_row" in data.info else "generated items, 0-based",
        "discovery_rows": _rows(data, first),
        "held_out_rows": _rows(data, rest),
    }
    return Split(discovery, held_out, frame, record)


class Evaluator:
    """Clean and corrupted metrics of a dataset, computed once; faithfulness of any mask against them."""

    def __init__(
        self,
        model,
        graph: Graph,
        data,
        ablation: str = "resample",
        batch_size: int = 32,
        n_bootstrap: int = 0,
        seed: int = 0,
    ):
        self.model, self.graph, self.data, self.ablation, self.batch_size = model, graph, data, ablation, batch_size
        self.n_bootstrap, self.seed = n_bootstrap, seed  # > 0: 95% bootstrap intervals over prompts too
        base = behaviour(model, data, batch_size)
        self.clean, self.corrupt = base.metric_clean.to_numpy(), base.metric_corrupted.to_numpy()
        self.cache = AblationCache(model, graph, data, ablation, batch_size)  # every circuit's ablation values

    def metric(self, keep: torch.Tensor) -> np.ndarray:
        logits = evaluate_mask(
            self.model, self.graph, self.data, keep, self.ablation, self.batch_size, cache=self.cache
        )
        return data_metric(logits, self.data).cpu().numpy()

    def metrics(self, keeps: list[torch.Tensor], rows_per_pass: int | None = None) -> np.ndarray:
        """Per-prompt metrics [C, N] of many circuits, several per forward pass."""
        return masks_metric(
            self.model, self.graph, self.data, keeps, self.ablation, self.batch_size, rows_per_pass, cache=self.cache
        ).numpy()

    def faithfulness(self, keep: torch.Tensor) -> dict:
        """Mean metric and normalized faithfulness (ratio of means, median of ratios) of a kept-edge mask,
        with `<name>_ci_low/_ci_high` columns when the evaluator bootstraps."""
        m = self.metric(keep)
        out = {"metric": float(m.mean()), **normalized(m, self.clean, self.corrupt)}
        if self.n_bootstrap:
            ci = dict(n_resamples=self.n_bootstrap, seed=self.seed)
            out |= intervals.columns("metric", intervals.mean, m, **ci)
            out |= intervals.columns("faithfulness", intervals.ratio_of_means, m, self.clean, self.corrupt, **ci)
            out |= intervals.columns("faithfulness_median", median_of_ratios, m, self.clean, self.corrupt, **ci)
        return out


def log_grid(n_edges: int, per_decade: int = 4) -> list[int]:
    """1, ~1.8, ~3.2, 5.6, 10, ... up to n_edges (inclusive), as distinct integers."""
    top = np.log10(max(n_edges, 1))
    ks = np.unique(np.round(10 ** np.linspace(0, top, int(np.ceil(top * per_decade)) + 1)).astype(int))
    return sorted(set(ks.tolist()) | {n_edges})


def top_k(graph: Graph, key: torch.Tensor, k: int) -> torch.Tensor:
    """The k existing edges with the largest key (ties broken by edge order), [S, R] bool."""
    flat = torch.where(graph.edge_exists, key.double(), torch.tensor(-torch.inf, dtype=torch.float64)).flatten()
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order] = True
    return keep.view_as(graph.edge_exists) & graph.edge_exists


def top_k_mask(graph: Graph, scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k existing edges with the largest |score| (ties broken by edge order), [S, R] bool."""
    return top_k(graph, scores.abs(), k)


def roc_curve(graph: Graph, scores: torch.Tensor, reference: torch.Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """(false positive rates, true positive rates, AUC) of ranking edges by |score| against a reference set."""
    exists = graph.edge_exists
    s = scores.abs().double()[exists].numpy()
    truth = reference[exists].numpy().astype(bool)
    order = np.argsort(-s, kind="stable")
    s, truth = s[order], truth[order]
    tp, fp = np.cumsum(truth), np.cumsum(~truth)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # one point per distinct score
    tpr = np.r_[0.0, tp[last] / max(truth.sum(), 1)]
    fpr = np.r_[0.0, fp[last] / max((~truth).sum(), 1)]
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def roc_point(graph: Graph, keep: torch.Tensor, reference: torch.Tensor) -> dict:
    """One circuit's point against a reference circuit: tpr (its share of the reference's edges), fpr (its share
    of the other edges) and the reference's size."""
    others = ~reference & graph.edge_exists
    return {
        "tpr": float((keep & reference).sum() / reference.sum()),
        "fpr": float((keep & others).sum() / others.sum()),
        "reference_edges": int(reference.sum()),
    }


def roc_from_points(fpr, tpr) -> tuple[np.ndarray, np.ndarray, float]:
    """A ROC curve through (0, 0), the given operating points (e.g. one per threshold) and (1, 1), with AUC."""
    pts = sorted(zip(fpr, tpr))
    f = np.array([0.0] + [p[0] for p in pts] + [1.0])
    t = np.array([0.0] + [p[1] for p in pts] + [1.0])
    return f, t, float(np.trapezoid(t, f))


def auc_of_ranking(abs_scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """ROC AUC of ranking edges by |score| against a reference set, per row of abs_scores [..., E]: the
    Mann-Whitney form (ties count one half), equal to roc_curve's trapezoids."""
    from scipy.stats import rankdata

    ranks = rankdata(abs_scores, axis=-1)
    pos, neg = truth.sum(), (~truth).sum()
    return (ranks[..., truth].sum(-1) - pos * (pos + 1) / 2) / (pos * neg)


def auc_interval(
    graph: Graph, item_scores: torch.Tensor, reference: torch.Tensor, n_bootstrap: int, seed: int
) -> tuple[float, float]:
    """95% bootstrap interval over prompts of the AUC of the mean edge scores (item_scores [N, S, R]):
    prompts are resampled as indices, so each resample's AUC ranks all edges of its own mean scores."""
    exists = graph.edge_exists
    per_item = item_scores[:, exists].double().numpy()  # [N, E]
    truth = reference[exists].numpy().astype(bool)
    n = len(per_item)

    def statistic(idx, axis=-1):
        idx = np.asarray(idx).astype(int)  # [..., n] resampled prompt indices
        flat = idx.reshape(-1, idx.shape[-1])
        counts = np.zeros((len(flat), n))  # how often each prompt is drawn, per resample: [b, N]
        np.add.at(counts, (np.arange(len(flat))[:, None], flat), 1.0 / flat.shape[-1])
        mean = counts @ per_item  # [b, E]
        return auc_of_ranking(np.abs(mean), truth).reshape(idx.shape[:-1])

    return intervals.interval(statistic, np.arange(n, dtype=float), n_resamples=n_bootstrap, seed=seed)
