"""Model behaviour on a task: the task metric on clean and corrupted prompts, per item."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lib.core.forward import answer_logits
from lib.core.metrics import data_metric
from lib.core.model import LoadedModel


def behaviour(model: LoadedModel, data, batch_size: int = 64) -> pd.DataFrame:
    """One row per item: group, clean and corrupted metric (two batched passes over the data)."""
    clean = data_metric(answer_logits(model, data.clean, data.answer_pos, batch_size), data).cpu().numpy()
    corrupt = data_metric(answer_logits(model, data.corrupt, data.answer_pos, batch_size), data).cpu().numpy()
    return pd.DataFrame(
        {
            "task": data.task,
            "item": np.arange(len(data)),
            "group": data.info["group"],
            "metric_clean": clean,
            "metric_corrupted": corrupt,
        }
    )


def behaviour_summary(model: LoadedModel, data, batch_size: int = 64) -> dict:
    b = behaviour(model, data, batch_size)
    return {
        "n": len(b),
        "accuracy": float((b.metric_clean > 0).mean()),
        "clean_mean": float(b.metric_clean.mean()),
        "corrupted_mean": float(b.metric_corrupted.mean()),
        "corrupted_accuracy": float((b.metric_corrupted > 0).mean()),
    }
