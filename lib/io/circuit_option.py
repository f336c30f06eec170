"""The shared --circuit option: `canonical`, `auto`, or a circuit JSON, resolved to a kept-edge mask. Checking
the option needs no torch; resolving it imports the methods it uses."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lib.core.choices import ABLATIONS
from lib.core.errors import UserError
from lib.io.circuit_json import Circuit

if TYPE_CHECKING:
    import torch

CircuitOpt = Annotated[
    str,
    typer.Option(
        "--circuit",
        help="canonical | auto (canonical if published for this "
        "task and model, else the smallest EAP-IG top-k circuit reaching "
        "0.8 faithfulness on discovery prompts) | path to a circuit JSON",
    ),
]
AblationOpt = Annotated[str, typer.Option("--ablation", help="resample | mean | zero")]
AUTO_TARGET = 0.8
AUTO_SEED_OFFSET = 7919  # discovery prompts come from another seed, and overlaps are dropped


@dataclass
class ResolvedCircuit:
    label: str  # written in every CSV row: canonical | auto:canonical | auto:eap-ig-top{k} | file:{name}
    keep: torch.Tensor  # [S, R] bool
    info: dict = field(default_factory=dict)  # recorded in run.json

    @property
    def n_edges(self) -> int:
        return int(self.keep.sum())


def check_options(spec: str, ablation: str) -> None:
    """Validate before any model is loaded: unknown ablation, missing circuit file."""
    if ablation not in ABLATIONS:
        raise UserError(f"unknown ablation {ablation!r}; choose from {', '.join(ABLATIONS)}")
    if spec in ("canonical", "auto"):
        return
    try:
        is_file = Path(spec).is_file()
    except (OSError, ValueError):
        is_file = False
    if not is_file:
        raise UserError(f"--circuit {spec!r} is neither canonical, auto, nor an existing circuit JSON file")
    Circuit.read(Path(spec))  # parses, and has edges, before any model is loaded


def check_against_model(spec: str, model, graph, tasks: list[str]) -> None:
    """Fail before any work: a circuit file that does not fit the model, or no canonical circuit."""
    from lib.methods.canonical import canonical_circuit

    if spec not in ("canonical", "auto"):
        Circuit.load(Path(spec), graph, model.name)
    elif spec == "canonical":
        for task in tasks:
            if canonical_circuit(task, graph, model.name) is None:
                raise UserError(
                    f"no canonical circuit is published for task {task} on model {model.name}; "
                    "use --circuit auto or a circuit JSON"
                )


def resolve_circuit(
    spec: str, model, graph, task: str, eval_data, seed: int, batch_size: int, ablation: str, progress_factory=None
) -> ResolvedCircuit:
    from lib.methods.canonical import canonical_circuit

    if spec not in ("canonical", "auto"):
        circuit = Circuit.load(Path(spec), graph, model.name)
        keep = circuit.mask(graph)
        return ResolvedCircuit(
            f"file:{Path(spec).name}",
            keep,
            {"source": str(spec), "method": circuit.method, "circuit_task": circuit.task, "n_edges": int(keep.sum())},
        )
    keep = canonical_circuit(task, graph, model.name)
    if keep is not None:
        label = "canonical" if spec == "canonical" else "auto:canonical"
        return ResolvedCircuit(label, keep, {"source": "canonical", "n_edges": int(keep.sum())})
    if spec == "canonical":
        raise UserError(
            f"no canonical circuit is published for task {task} on model {model.name}; "
            "use --circuit auto or a circuit JSON"
        )
    return discover_auto(model, graph, task, eval_data, seed, batch_size, ablation, progress_factory)


def discover_auto(
    model, graph, task: str, eval_data, seed: int, batch_size: int, ablation: str, progress_factory=None
) -> ResolvedCircuit:
    """Smallest EAP-IG top-k circuit (k on a log grid) with normalized faithfulness >= 0.8 on discovery
    prompts disjoint from the evaluation prompts."""
    from lib.methods.eap import edge_scores
    from lib.methods.faithfulness import Evaluator, log_grid, top_k_mask
    from tasks import TASKS

    n = len(eval_data)
    discovery, discovery_seed = eval_data.discovery, None  # a small task file's first half (circuit_experiment)
    if discovery is None:  # generated from another seed, overlaps with the evaluation prompts dropped
        discovery_seed = seed + AUTO_SEED_OFFSET
        pool = TASKS[task].build(model.tokenizer, 2 * n, discovery_seed)
        held = set(eval_data.info.clean_text)
        keep_idx = [i for i in range(len(pool)) if pool.info.clean_text[i] not in held][:n]
        if not keep_idx:
            raise UserError(f"task {task}: no discovery prompts disjoint from the evaluation prompts; use more prompts")
        discovery = pool.subset(keep_idx)
    bar = progress_factory(len(discovery), f"{task}: auto circuit (EAP-IG scores)") if progress_factory else None
    scores = edge_scores(model, graph, discovery, batch_size, "eap-ig", ig_steps=5, progress=bar)
    if bar is not None:
        bar.close()
    ev = Evaluator(model, graph, discovery, ablation, batch_size)
    tried, grid = [], log_grid(graph.n_edges)  # ends with every edge kept (the clean model, faithfulness 1)
    bar = progress_factory(len(grid), f"{task}: auto circuit (top-k sizes tried)") if progress_factory else None
    for k in grid:
        keep = top_k_mask(graph, scores, k)
        f = ev.faithfulness(keep)["faithfulness"]
        tried.append({"k": k, "faithfulness": f})
        if bar is not None:
            bar.update(1)
        if f >= AUTO_TARGET:
            break
    if bar is not None:
        bar.close()
    return ResolvedCircuit(
        f"auto:eap-ig-top{k}",
        keep,
        {
            "source": "auto",
            "method": "eap-ig",
            "ig_steps": 5,
            "k": k,
            "n_edges": k,
            "reached_target": f >= AUTO_TARGET,
            "target_faithfulness": AUTO_TARGET,
            "discovery_faithfulness": f,
            "n_discovery": len(discovery),
            "discovery_seed": discovery_seed,
            "ablation": ablation,
            "grid": tried,
        },
    )


@contextmanager
def circuit_experiment(script: str, opts, circuit: str, ablation: str, **extra_options):
    """cli.experiment for scripts that evaluate a circuit: the circuit option is checked against the
    model before any work; yields (model, run, graph, datasets), and run.json gets the circuits used. Under
    --circuit auto a task file's rows are split as 05 splits them (cli.task_split): the circuit is discovered on
    the first part and every number is computed on the rest."""
    from lib.core.graph import graph_of
    from lib.io import cli

    with cli.experiment(script, opts, circuit=circuit, ablation=ablation, **extra_options) as (lm, run):
        graph = graph_of(lm)
        check_against_model(circuit, lm, graph, opts.tasks)
        run.record.setdefault("circuits", {})  # a resumed run keeps those of the tasks it finished
        datasets = cli.task_builds(lm, opts)
        if circuit == "auto":  # a task file has no second seed: its rows are split into discovery and evaluation
            from tasks import files

            for name in [n for n in opts.tasks if n in files.SOURCES]:
                split = cli.task_split(run, name, lm.tokenizer, opts)
                datasets[name] = split.held_out
                datasets[name].discovery = split.discovery
        yield lm, run, graph, datasets


def resolve_with_progress(spec: str, model, graph, task: str, data, opts, ablation: str, run) -> ResolvedCircuit:
    """resolve_circuit with progress bars, recording the circuit used in run.json."""
    from lib.io import progress

    resolved = resolve_circuit(
        spec,
        model,
        graph,
        task,
        data,
        opts.seed,
        opts.batch_size,
        ablation,
        progress_factory=lambda n, d: progress.bar(n, d, "step"),
    )
    run.record["circuits"][task] = {"label": resolved.label, **resolved.info}
    return resolved
