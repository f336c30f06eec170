"""Layout invariants: no import circle in lib/ (module- or function-level), and the option values the CLI checks
without torch are exactly the ones the implementing modules use."""

import ast
from pathlib import Path

from conftest import ROOT


def imports_of(path: Path) -> set[str]:
    """lib.* modules a file imports anywhere in it (a `from lib.x import y` of a module y counts as lib.x.y)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lib"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if (ROOT / (sub.replace(".", "/") + ".py")).is_file() else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("lib.")}
    return out


def test_no_import_circles_in_lib():
    graph = {".".join(p.relative_to(ROOT).with_suffix("").parts): imports_of(p) for p in (ROOT / "lib").rglob("*.py")}
    for start in graph:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for dep in graph.get(node, ()):
                assert dep != start, "import circle: " + " -> ".join(path + [dep])
                if dep not in path:
                    stack.append((dep, path + [dep]))


def test_cli_choices_are_the_implementations():
    from lib.core import choices, model, patching
    from lib.features import ablate, circuit, effects
    from lib.methods import acdc, eap, hypotheses, node_patching, path_patching
    from tasks import TASK_NAMES, TASKS

    assert tuple(TASKS) == TASK_NAMES
    assert set(model.MODELS) == set(choices.BUILTIN_MODELS) and tuple(model.DTYPES) == choices.DTYPES
    assert patching.ABLATIONS is choices.ABLATIONS and eap.METHODS is choices.EAP_METHODS
    assert acdc.METRICS is choices.ACDC_METRICS and hypotheses.HYPOTHESES is choices.HYPOTHESES
    assert node_patching.DIRECTIONS is choices.NODE_PATCH_DIRECTIONS and path_patching.PATHS is choices.PATHS
    assert effects.METHODS is choices.FEATURE_METHODS and effects.PATCHES is choices.FEATURE_PATCHES
    assert circuit.AGGREGATIONS is choices.FEATURE_AGGREGATIONS and ablate.ABLATIONS is choices.FEATURE_ABLATIONS
