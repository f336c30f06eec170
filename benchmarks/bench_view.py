"""How fast a run's page (lib/io/view_page) renders and answers its sliders in headless Chromium, on the
attribution graph of bench_attribution.py (gpt2-random, random TopK per-layer transcoders of 24,576 latents,
k = 32: about 6,000 nodes), against the budget of 1 s:

    uv run python benchmarks/bench_view.py --model gpt2-random
    uv run python benchmarks/bench_view.py --model toy --width 256 --k 8

The graph is written as 10 writes it (graphs/<slug>.json and .npz, scores.csv, run.json) into a run directory
and its page built from those files. Rows: the page's size, the nodes and edges it holds, the seconds from
navigation to the first drawn graph (page load, parse, prune, draw), and the milliseconds from a slider move to
the next painted frame (prune + draw + layout + paint; median over moves of the node and the edge threshold)."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.io import checks, cli  # noqa: E402

app = cli.script_app(__doc__)
BUDGET_SECONDS = 1.0


MOVE = """const [id, value, done] = arguments;
const t0 = performance.now();
const s = document.getElementById(id); s.value = value; s.dispatchEvent(new Event('input'));
requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now() - t0)));"""


@app.command()
def main(
    model: cli.ModelOpt = "gpt2-random",
    width: int = typer.Option(24576, help="latents per layer of random transcoders"),
    k: int = typer.Option(32, help="active latents per token (TopK)"),
    out: cli.OutOpt = Path("results"),
    seed: cli.SeedOpt = 0,
):
    checks.check_between(1, 1 << 20, ("--width", width))
    checks.check_between(1, width, ("--k", k))
    import pandas as pd
    from bench_attribution import random_transcoders

    from lib.core.model import load_model
    from lib.features.attribution import attribute, metric_direction
    from lib.features.graph_checks import graph_scores
    from lib.features.influence import logit_weights, prune
    from lib.io.graph_report import write_graph
    from lib.io.results import RunDir
    from lib.io.view_browser import headless_chromium
    from lib.io.view_page import build
    from tasks import TASKS

    lm = load_model(model, device="cpu", seed=seed)
    data = TASKS["ioi"].build(lm.tokenizer, 1, seed)
    tokens = data.clean[0, : int(data.lengths[0])]
    tc = random_transcoders(lm, "plt", width, k, seed)
    direction = metric_direction(lm.bridge.W_U.detach(), data.correct[0], data.wrong[0])
    print("attribution graph ...", file=sys.stderr)
    graph = attribute(lm, tc, tokens, direction)
    weights = logit_weights(graph.adjacency.shape[0], graph.logit_probs)
    extra = {"node_threshold": 0.8, "edge_threshold": 0.98}
    pruned = prune(graph.adjacency, weights, graph.n_features, graph.n_pos, graph.n_logits, **extra)
    options = {"tasks": ["ioi"], **extra}
    run = RunDir(out, "bench_view", {"options": options, "model": {"name": lm.name, "n_layers": lm.n_layers}}, sys.argv)
    write_graph(run, lm, graph, pruned, "ioi_0", extra, lambda layer, feature: f"L{layer}/{feature}", picture=False)
    scores = {"task": "ioi", "graph": "ioi_0", "prompt": data.info.clean_text.iloc[0]}
    scores |= graph_scores(graph, weights, pruned) | {"top_logit": "", "top_logit_prob": float(graph.logit_probs[0])}
    run.csv("scores.csv", pd.DataFrame([scores]))
    t0 = time.perf_counter()
    page = build(run.path, {"script": "10_attribution_graphs", "run_id": run.run_id, **run.record})
    build_seconds = time.perf_counter() - t0
    run.text("view.html", page)
    driver = headless_chromium()
    try:
        t0 = time.perf_counter()
        driver.get((run.path / "view.html").as_uri())
        driver.execute_async_script("const done = arguments[0]; requestAnimationFrame(() => done())")
        load_seconds = time.perf_counter() - t0
        held = driver.execute_script("const v = viewer.state.view; return [v.nodes.id.length, v.edges.t.length]")
        drawn = driver.execute_script("return [viewer.state.drawn.nodes.length, viewer.state.drawn.edges.length]")
        driver.save_screenshot(str(run.path / "view.png"))
        run.files.append("view.png")
        moves = [("node-threshold", v) for v in (0.5, 0.6, 0.7, 0.9, 0.8)]
        moves += [("edge-threshold", v) for v in (0.9, 0.95, 0.99, 0.98)]
        times = [driver.execute_async_script(MOVE, slider, value) for slider, value in moves]
    finally:
        driver.quit()
    row = {
        "model": lm.name,
        "graph_nodes": graph.adjacency.shape[0],
        "active_features": len(graph.active),
        "page_nodes": held[0],
        "page_edges": held[1],
        "drawn_nodes_default": drawn[0],
        "drawn_edges_default": drawn[1],
        "page_mb": len(page.encode()) / 1e6,
        "build_seconds": build_seconds,
        "load_to_first_draw_seconds": load_seconds,
        "slider_median_ms": statistics.median(times),
        "slider_max_ms": max(times),
        "load_over_budget": load_seconds / BUDGET_SECONDS,
        "slider_max_over_budget": max(times) / 1000 / BUDGET_SECONDS,
    }
    frame = pd.DataFrame([row])
    run.csv("bench.csv", frame)
    print(frame.T.to_string(header=False))
    print(f"wrote {run.finish()}")


if __name__ == "__main__":
    cli.main(app)
