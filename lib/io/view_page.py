"""view.html: one self-contained page per run that holds a circuit or a graph (05, 06, 09, 10, 11, 24), built from
the run's own files (lib.io.view_data, lib.io.view_graph) with view_assets/view.js and view.css inline: opened
from file:// with no server, no network and no library."""

from __future__ import annotations

import html
import json
from pathlib import Path

from lib.core.errors import UserError

ASSETS = Path(__file__).parent / "view_assets"
SCRIPTS = (
    "05_eap",
    "06_acdc",
    "09_feature_circuits",
    "10_attribution_graphs",
    "11_compare_models",
    "24_compare_circuits",
)


def views_of(run_dir: Path, record: dict) -> list[dict]:
    from lib.io import view_compare, view_data, view_graph

    builders = {
        "05_eap": view_data.views_05,
        "06_acdc": view_data.views_06,
        "09_feature_circuits": view_data.views_09,
        "10_attribution_graphs": view_graph.graph_views,
        "11_compare_models": view_compare.views_11,
        "24_compare_circuits": view_data.views_24,
    }
    return builders[record["script"]](run_dir, record)


def page(title: str, meta: str, views: list[dict]) -> str:
    """The page: DATA as JSON in a script element (`</` escaped so no string can end it), view.css, view.js."""
    data = json.dumps({"title": title, "meta": meta, "views": views}, allow_nan=False, separators=(",", ":"))
    data = data.replace("</", "<\\/")
    css, js = (ASSETS / "view.css").read_text(), (ASSETS / "view.js").read_text()
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{css}</style></head>
<body>
<header><h1 id="title"></h1><div class="meta" id="meta"></div></header>
<nav id="index"></nav>
<main>
<div id="canvas"></div>
<aside>
<div class="panel"><h2 id="view-title"></h2><div class="control"><label for="picker">view</label><select id="picker"></select></div>
<div id="controls"></div><div class="note" id="note"></div></div>
<div class="panel" id="numbers"></div>
<div class="panel" id="info"></div>
<div class="panel"><h2>Legend</h2><div id="legend"></div></div>
</aside>
</main>
<script type="application/json" id="view-data">{data}</script>
<script>{js}</script>
</body></html>
"""


def build(run_dir: Path, record: dict | None = None) -> str:
    """The page of a run directory (record: its run.json, read from the directory when not given)."""
    if record is None:
        path = run_dir / "run.json"
        if not path.is_file():
            raise UserError(f"{run_dir} has no run.json: not a finished run directory")
        record = json.loads(path.read_text())
    assert record is not None  # given, or read above
    script = record.get("script")
    if script not in SCRIPTS:
        raise UserError(
            f"{run_dir} is a run of {script}, which holds no circuit or graph; pages are built for "
            + ", ".join(SCRIPTS)
        )
    try:
        views = views_of(run_dir, record)
    except FileNotFoundError as e:
        raise UserError(f"{run_dir} is missing {Path(str(e.filename)).name}: an incomplete run") from None
    if not views:
        raise UserError(f"{run_dir} holds no circuit or graph to show")
    model, tasks = record["model"]["name"], ", ".join(record["options"]["tasks"])
    if "model_b" in record:  # 11: two models
        model = f"{model} (A) and {record['model_b']['name']} (B)"
    run_id = record.get("run_id") or run_dir.name
    meta = f"run {run_id}: {script}.py on {model} ({record['model'].get('n_layers')} layers), tasks {tasks}"
    if record.get("seed") is not None:
        meta += f", seed {record['seed']}"
    return page(f"{script}: {tasks}", meta, views)


def write(run) -> None:
    """Called by lib.io.cli.experiment once a run's files are written: the page joins them. The page is derived
    from those files: should building it fail, the run is kept without it, saying so in one line and in run.json
    (the tests build every page type, so this is for what they did not foresee)."""
    import sys

    try:
        run.text("view.html", build(run.path, {"script": run.script, "run_id": run.run_id, **run.record}))
    except Exception as e:  # noqa: BLE001 - any failure of a derived file must not lose the run's results
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        run.record["view"] = f"not written: {reason}"
        print(f"warning: view.html not written ({reason}); rebuild it with python -m lib.io.view", file=sys.stderr)
