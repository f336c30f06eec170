"""11_compare_models.py against known answers (a model against itself: tests/test_view.py, end to end): against a copy with permuted MLP neurons
and dictionary features, and against a copy whose residual basis is rotated (lib.tools.model_copies); a model of
another shape; and its refusals."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import refused, run_cli

from lib.compare.verdict import Thresholds
from lib.io import progress

EXTRA = dict(
    top_k=20,
    ig_steps=2,
    n_graphs=3,
    node_threshold=0.8,
    edge_threshold=0.98,
    ridge_alpha=None,
    n_resamples=5,
    n_permutations=20,
    n_clusters=2,
)
OPTS = SimpleNamespace(batch_size=16, n_bootstrap=0, seed=0, n_prompts=8)


@pytest.fixture(scope="module")
def toy64():
    from lib.core.model import load_model

    return load_model("toy", device="cpu", dtype="float64")


@pytest.fixture(scope="module")
def split(toy64):
    from lib.methods.faithfulness import discovery_and_held_out

    return discovery_and_held_out("ioi", toy64.tokenizer, OPTS.n_prompts, OPTS.seed)


def toy_set(model):
    from lib.core.model import TOY_DIR
    from lib.features import files

    chosen = {n: d for n, d in files.read_set(TOY_DIR / "dictionaries").items() if n.startswith(("tc", "resid"))}
    return files.fit(chosen, model)


def compare(a, b, split, dicts=None):
    from lib.compare import pipeline

    agree = {"same_vocabulary": True, "same_positions": True}
    return pipeline.compare(
        a, b, split, split, "ioi", OPTS, EXTRA, agree, dicts, None, Thresholds(), progress.silent_bar
    )


def test_permuted_copy_is_matched_back_exactly(toy64, split, tmp_path):
    from lib.core.model import TOY_DIR, load_model
    from lib.features import files
    from lib.tools.model_copies import permute

    record = permute(TOY_DIR, tmp_path / "perm", seed=4)
    b = load_model(str(tmp_path / "perm"), device="cpu", dtype="float64")
    set_a = toy_set(toy64)
    set_b = files.fit({n: d for n, d in files.read_set(tmp_path / "perm" / "dictionaries").items() if n in set_a}, b)
    out = compare(toy64, b, split, (set_a, set_b))
    assert out["verdict"]["verdict"] == "injective"
    from lib.compare import features

    acts = features.feature_activations(toy64, set_a, list(set_a), split.discovery, 16)
    for site in set_a:
        perm = np.array(record["dictionaries"][site])  # B's feature j is A's feature perm[j]
        pairs = [(r["feature_a"], r["feature_b"]) for r in out["pairs"] if r["site"] == site]
        wrong = [(i, j) for i, j in pairs if perm[j] != i]
        for i, j in wrong:  # only features the data cannot tell apart: equal activations on every token
            assert torch.equal(acts[site][:, i], acts[site][:, perm[j]]), (site, i, j)
        assert len(pairs) == int((acts[site].abs().sum(0) > 0).sum())  # every live feature is matched
    assert all(r["edit_distance"] == 0 for r in out["graphs"]) and out["graphs"]
    assert all(r["spectral_distance"] < 1e-9 for r in out["graphs"])


def test_rotated_copy_is_convertible_and_only_through_the_map(toy64, split, tmp_path):
    from lib.compare import convert
    from lib.core.model import TOY_DIR, load_model
    from lib.methods.alignment import correlations, r_squared, ridge_cv
    from lib.tools.model_copies import rotate

    q = rotate(TOY_DIR, tmp_path / "rot", seed=5)
    b = load_model(str(tmp_path / "rot"), device="cpu", dtype="float64")
    out = compare(toy64, b, split)
    assert out["verdict"]["verdict"] == "convertible", out["verdict"]
    assert min(r["r2_held_out"] for r in out["convert"]) > 1 - 1e-6
    assert min(r["preserved"] for r in out["patching"]) == pytest.approx(1.0, abs=1e-4)
    heads = {r["comparison"]: r for r in out["baselines"] if r["level"] == "heads"}
    assert heads["A vs B"]["score_spearman"] > 0.999  # EAP-IG scores are dot products: a rotation keeps them
    layers = list(range(toy64.n_layers))
    ra = convert.residuals(toy64, split.discovery, layers, 16)
    rb = convert.residuals(b, split.discovery, layers, 16)
    test_a = convert.residuals(toy64, split.held_out, layers, 16)
    test_b = convert.residuals(b, split.held_out, layers, 16)
    centre = torch.eye(q.shape[0], dtype=torch.float64) - 1.0 / q.shape[0]  # the stream lives off the ones vector
    for layer in layers:
        fit = ridge_cv(ra[layer], rb[layer])
        assert r_squared(test_b[layer], fit(test_a[layer])) > 1 - 1e-6
        torch.testing.assert_close(centre @ fit.weight, centre @ q.T, atol=1e-4, rtol=0)  # W recovers Q
        corr, _, _ = correlations(ra[layer], rb[layer])
        assert np.abs(np.diag(corr)).mean() < 0.9  # raw dimensions do not correspond: the map is needed


def test_another_shape_skips_head_level_and_says_so(toy64, tiny, split):
    out = compare(toy64, tiny, split)
    assert any("head-level comparison skipped" in n for n in out["notes"])
    assert out["baselines"] == [] and out["cross"] == []
    assert [(r["layer_a"], r["layer_b"]) for r in out["convert"] if r["part"] == "whole"] == [
        (0, 0),
        (1, 0),
        (2, 1),
        (3, 1),
    ]
    assert out["verdict"]["verdict"] in ("convertible", "different")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "toy"], "--models takes exactly 2 values"),
        (["--models", "toy", "toy-seed1", "toy"], "--models takes exactly 2 values"),
        (["--models", "toy", "toy-rerun@step7"], "toy-rerun has no checkpoint at step 7"),
        (["--models", "toy", "toy", "--dictionaries", "toy"], "--dictionaries takes exactly 2 values"),
        (
            ["--models", "toy", "toy-rerun@step1000", "--dictionaries", "toy", "toy"],
            "trained on 'toy', not on 'toy-rerun@step1000'",
        ),
        (["--models", "toy", "toy", "--shared-dictionary", "tc1"], "--shared-dictionary 'tc1'"),
        (["--models", "toy", "toy", "--ridge-alpha", "-1"], "--ridge-alpha must be auto or one number"),
        (["--models", "toy", "toy", "--n-graphs", "1"], "--n-graphs"),
        (["--models", "toy", "gpt2-random", "--tasks", "sva"], "have different vocabularies"),
    ],
)
def test_bad_input_is_one_line_before_any_model_loads(tmp_path, args, message):
    r = run_cli("11_compare_models.py", *args, "--out", str(tmp_path))
    refused(r, message)
    assert not any(tmp_path.iterdir())


def test_patching_restarted_mid_model_equals_full_passes_with_a_hook(toy64, split):
    """Cross-model patching recomputes only the blocks after the patched layer: the same logits as a full pass
    with the replacement hooked in (the exact slow computation), for a whole-stream and a part patch."""
    from lib.compare import convert

    held = split.held_out
    layers = list(range(toy64.n_layers))
    stream = convert.residuals(toy64, held, layers, 16)
    gen = torch.Generator().manual_seed(8)
    patches = [
        (1, stream[1] + 0.3 * torch.randn(stream[1].shape, generator=gen, dtype=torch.float64), None),
        (2, 0.5 * stream[2], 0.2 * stream[2]),
        (3, torch.zeros_like(stream[3]), None),
    ]
    fast = convert.patched_runs(toy64, held, patches, 5)
    slow = convert.patched_runs(toy64, held, patches, 5, restart=False)
    for f, s in zip(fast, slow):
        torch.testing.assert_close(f, s, atol=1e-9, rtol=0)
    assert not torch.allclose(fast[0], fast[2])  # the patches do something


def test_feature_maps_fit_on_sparse_features_of_few_prompts(toy):
    """toy's tc1 features on 8 SVA prompts (32 tokens, 256 mostly silent features): LAPACK's eigh of x'x failed to
    converge there and the run crashed; the cross-validated ridge now works from the SVD of x."""
    from lib.core.model import TOY_DIR
    from lib.features import files
    from lib.methods.alignment import r_squared, ridge_cv
    from lib.methods.faithfulness import discovery_and_held_out

    set_a = files.fit({"tc1": files.read_set(TOY_DIR / "dictionaries")["tc1"]}, toy)
    from lib.compare import features

    data = discovery_and_held_out("sva", toy.tokenizer, 8, 0).discovery
    x = features.feature_activations(toy, set_a, ["tc1"], data, 16)["tc1"]
    fit = ridge_cv(x, x)
    assert r_squared(x, fit(x)) > 0.99
