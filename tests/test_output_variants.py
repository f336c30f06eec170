"""21_output_variants.py against an independent computation (slow patching reference + scipy)."""

import numpy as np
import pandas as pd
import torch
from conftest import run_cli
from scipy.spatial.distance import jensenshannon
from scipy.special import softmax
from scipy.stats import entropy
from test_patching import slow_reference

from lib.core.forward import answer_logits
from lib.core.graph import graph_of
from lib.core.patching import ablate_mask, ablation_values
from lib.io.circuit_json import Circuit
from tasks import TASKS


def test_against_independent_computation(toy, tmp_path):
    g = graph_of(toy)
    gen = torch.Generator().manual_seed(0)
    keep = (torch.rand(g.edge_exists.shape, generator=gen) < 0.5) & g.edge_exists
    Circuit("toy", "sva", "random-half", {}, {e: 0.0 for e in g.edges_of(keep)}).save(tmp_path / "c.json", g)
    r = run_cli(
        "21_output_variants.py",
        "--tasks",
        "sva",
        "--model",
        "toy",
        "--n-prompts",
        "5",
        "--circuit",
        str(tmp_path / "c.json"),
        "--out",
        str(tmp_path / "res"),
    )
    assert r.returncode == 0, r.stderr
    (run,) = list((tmp_path / "res" / "21_output_variants").iterdir())
    items = pd.read_csv(run / "items.csv")

    data = TASKS["sva"].build(toy.tokenizer, 5, 0)
    full = answer_logits(toy, data.clean, data.answer_pos, 8).double().numpy()
    circ = slow_reference(toy, g, data, ablation_values(toy, g, data, "resample"), ablate_mask(g, keep))
    p, q = softmax(full, -1), softmax(circ.double().numpy(), -1)
    np.testing.assert_allclose(items.kl, entropy(p, q, axis=-1), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(items.reverse_kl, entropy(q, p, axis=-1), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(items.js, jensenshannon(p, q, axis=-1) ** 2, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(items.tv, 0.5 * np.abs(p - q).sum(-1), rtol=1e-3, atol=1e-6)
    assert items.kl.max() > 1e-3  # the random half-circuit really differs from the model
    summary = pd.read_csv(run / "summary.csv")
    kl = summary[summary.metric == "kl"].iloc[0]
    assert np.isclose(kl["mean"], items.kl.mean()) and np.isclose(kl["median"], items.kl.median())
    assert kl.mean_ci_low <= kl["mean"] <= kl.mean_ci_high and kl.median_ci_low <= kl["median"] <= kl.median_ci_high
    faith = summary[summary.metric == "logit_diff_faithfulness"].iloc[0]
    assert faith.ratio_of_means_ci_low <= faith.ratio_of_means <= faith.ratio_of_means_ci_high
    assert {"metrics_by_task.png", "kl_vs_js.png", "spread.csv"} <= {f.name for f in run.iterdir()}
