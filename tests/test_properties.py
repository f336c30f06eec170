"""Property-based tests (hypothesis): option parsing never tracebacks, metrics keep their properties on any
logits, circuit JSON round-trips, and ACDC resumed after an interrupt anywhere equals the uninterrupted run."""

import copy
import math
import os
import pickle
import signal

import numpy as np
import pytest
import torch
from conftest import refused, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

ARGV_TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=30)
STRING_OPTIONS = {
    "01_dla.py": ["--tasks", "--device", "--dtype", "--out", "--resume"],
    "02_logit_diff.py": ["--tasks", "--circuit", "--ablation", "--device"],
    "03_activation_patching.py": ["--direction", "--tasks"],
    "04_causal_scrubbing.py": ["--hypothesis", "--circuit"],
    "05_eap.py": ["--method", "--metric", "--top-k", "--threshold", "--ablation", "--ig-points"],
    "06_acdc.py": ["--thresholds", "--metric", "--ablation", "--resume"],
    "21_output_variants.py": ["--circuit", "--ablation", "--tasks"],
    "23_robustness.py": ["--circuit", "--tasks"],
    "24_compare_circuits.py": ["--circuits", "--thresholds", "--tasks"],
}
INT_OPTIONS = {
    "01_dla.py": ["--n-prompts", "--batch-size", "--seed"],
    "03_activation_patching.py": ["--rows-per-pass", "--seed"],
    "04_causal_scrubbing.py": ["--n-seeds", "--pool-size", "--n-prompts"],
    "05_eap.py": ["--ig-steps", "--top-k", "--seed"],
    "06_acdc.py": ["--batch-size", "--thresholds"],
    "24_compare_circuits.py": ["--top-k", "--n-resamples", "--ig-steps"],
}
# a model that cannot load: every run that gets past option parsing fails there, before anything is written
NO_MODEL = ["--model", "./no-such-model-directory"]


def _assert_refused(tmp_path, script, option, value):
    out = tmp_path / "res"
    r = run_cli(script, *NO_MODEL, option, value, "--out", str(out) if option != "--out" else "unused")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, (option, value, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), (option, value, r.stderr)
    assert not out.exists() and not (tmp_path / "unused").exists()


@pytest.mark.parametrize("script", sorted(STRING_OPTIONS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_string_option_value_is_one_line_exit_2(tmp_path, script, data):
    option = data.draw(st.sampled_from(STRING_OPTIONS[script]))
    _assert_refused(tmp_path, script, option, data.draw(ARGV_TEXT))


@pytest.mark.parametrize(
    "option, value",
    [("--tasks", "~0/"), ("--model", "~nobody-here/model"), ("--dictionaries", "~0/set")],
)
def test_a_home_directory_of_no_user_is_one_line(tmp_path, option, value):
    """Found by the property test above: `~0/` made pathlib raise RuntimeError (no such user's home)."""
    args = ["--tasks", "ioi", "--model", "toy"] if option == "--dictionaries" else []
    script = "09_feature_circuits.py" if option == "--dictionaries" else "02_logit_diff.py"
    r = run_cli(script, *args, option, value, "--out", str(tmp_path / "res"))
    refused(r, "names no home directory")
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("script", sorted(INT_OPTIONS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_integer_option_value_is_one_line_exit_2(tmp_path, script, data):
    option = data.draw(st.sampled_from(INT_OPTIONS[script]))
    value = data.draw(st.integers(min_value=-(2**70), max_value=2**70))
    _assert_refused(tmp_path, script, option, str(value))


LOGITS = arrays(
    np.float64,
    st.tuples(st.integers(1, 4), st.integers(2, 12)),
    elements=st.one_of(st.floats(-1e30, 1e30), st.sampled_from([-1e30, 1e30, 0.0, -3e38, 3e38])),
)


@settings(max_examples=200, deadline=None)
@given(p=LOGITS, data=st.data())
def test_divergences_keep_their_properties_on_any_logits(p, data):
    from lib.core.metrics import js_divergence, kl_divergence, reverse_kl, total_variation

    q = data.draw(arrays(np.float64, p.shape, elements=st.floats(-1e30, 1e30)))
    P, Q = torch.tensor(p), torch.tensor(q)
    kl, rkl, js, tv = (f(P, Q) for f in (kl_divergence, reverse_kl, js_divergence, total_variation))
    for v in (kl, rkl, js, tv):
        assert not torch.isnan(v).any()
    assert (kl >= 0).all() and (rkl >= 0).all()
    assert ((js >= 0) & (js <= math.log(2))).all() and torch.equal(js, js_divergence(Q, P))
    assert ((tv >= 0) & (tv <= 1)).all() and torch.equal(tv, total_variation(Q, P))
    assert (kl_divergence(P, P) == 0).all() and (js_divergence(P, P) <= 1e-12).all()  # JS: rounding of ln 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_circuit_json_round_trips(tmp_path, data):
    from lib.core.graph import Graph
    from lib.io.circuit_json import Circuit

    g = Graph(data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    edges = data.draw(st.lists(st.sampled_from(g.edge_names), min_size=1, unique=True))
    scores = data.draw(
        st.lists(
            st.one_of(st.floats(allow_infinity=False), st.just(float("nan"))), min_size=len(edges), max_size=len(edges)
        )
    )
    c = Circuit("m", "ioi", "test", {"k": 1}, dict(zip(edges, scores)))
    c.save(tmp_path / "c.json", g)
    back = Circuit.load(tmp_path / "c.json", g)
    assert set(back.edges) == set(edges) and torch.equal(back.mask(g), c.mask(g))
    for e, s in zip(edges, scores):
        assert back.edges[e] == s or (math.isnan(s) and math.isnan(back.edges[e]))
    assert (back.model, back.task, back.method, back.params) == ("m", "ioi", "test", {"k": 1})


@pytest.fixture(scope="module")
def acdc_setup(tiny):
    from lib.core.graph import graph_of
    from lib.methods.acdc import run_acdc
    from tasks import TASKS

    g, data = graph_of(tiny), TASKS["sva"].build(tiny.tokenizer, 4, 1)
    return tiny, g, data, run_acdc(tiny, g, data, 0.02, "kl", batch_size=4)


class _Progress:
    """Sends a signal to this process at its k-th update (inside ACDC's critical section)."""

    def __init__(self, k):
        self.k, self.n = k, 0

    def update(self, n=1):
        self.n += 1
        if self.n == self.k:
            os.kill(os.getpid(), signal.SIGTERM)

    def set_postfix(self, **kw):
        pass


@settings(max_examples=12, deadline=None)
@given(k=st.integers(1, 100), inside=st.booleans())
def test_acdc_resumed_after_an_interrupt_anywhere_equals_uninterrupted(acdc_setup, monkeypatch_session, k, inside):
    """SIGTERM at the k-th metric evaluation (outside a trial's bookkeeping) or at the k-th progress update
    (inside it, deferred); the state as the interrupted run left it, resumed, gives the same circuit."""
    import lib.methods.acdc as acdc
    from lib.io import interrupts

    model, g, data, whole = acdc_setup
    calls = [0]
    real_score = acdc.score

    def score(*args):
        calls[0] += 1
        if not inside and calls[0] == k:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_score(*args)

    monkeypatch_session.setattr(acdc, "score", score)
    state = acdc.ACDCState(0.02)
    try:
        with interrupts.handled(), pytest.raises(interrupts.Interrupted):
            acdc.run_acdc(
                model,
                g,
                data,
                0.02,
                "kl",
                batch_size=4,
                state=state,
                progress=_Progress(k) if inside else None,
                critical=interrupts.deferred,
            )
    finally:
        monkeypatch_session.setattr(acdc, "score", real_score)
    saved = pickle.loads(pickle.dumps(copy.deepcopy(state)))  # as the checkpoint stores it
    resumed = acdc.run_acdc(model, g, data, 0.02, "kl", batch_size=4, state=saved)
    assert resumed.__dict__ == whole.__dict__


@pytest.fixture(scope="module")
def monkeypatch_session():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()
