"""Layout invariants: the import contracts (layers, no circles), and the option values the CLI checks without torch
are exactly the ones the implementing modules use."""

from pathlib import Path

from conftest import ROOT


def test_import_contracts_hold():
    """pyproject.toml's import-linter contracts: the layers point one way and no modules form a circle; a
    change that reaches up a layer fails here with the import it added."""
    import subprocess
    import sys

    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "2 kept, 0 broken" in r.stdout


def test_cli_choices_are_the_implementations():
    from lib.core import choices, model, patching
    from lib.features import ablate, circuit, effects
    from lib.methods import acdc, eap, hypotheses, node_patching, path_patching
    from tasks import TASK_NAMES, TASKS

    assert tuple(TASKS) == TASK_NAMES
    assert set(model.MODELS) | set(choices.SHIPPED_MODELS) == set(choices.BUILTIN_MODELS)  # shipped: folders
    assert all((choices.MODELS_DIR / n).is_dir() for n in choices.SHIPPED_MODELS)
    assert tuple(model.DTYPES) == choices.DTYPES
    assert patching.ABLATIONS is choices.ABLATIONS and eap.METHODS is choices.EAP_METHODS
    assert acdc.METRICS is choices.ACDC_METRICS and hypotheses.HYPOTHESES is choices.HYPOTHESES
    assert node_patching.DIRECTIONS is choices.NODE_PATCH_DIRECTIONS and path_patching.PATHS is choices.PATHS
    assert effects.METHODS is choices.FEATURE_METHODS and effects.PATCHES is choices.FEATURE_PATCHES
    assert circuit.AGGREGATIONS is choices.FEATURE_AGGREGATIONS and ablate.ABLATIONS is choices.FEATURE_ABLATIONS
