"""Estimates for the README's GPU recipes (gemma-2-2b with the `gemma` transcoders; MIB's Gemma-2 IOI cell) from a
model of gemma-2-2b's real widths with seeded random weights and only --layers of its 26 layers, where no GPU
and no real weights are at hand:

    uv run python benchmarks/bench_published.py --layers 2

Rows: parameters and their memory at the real depth (exact, from the shapes: weights, k/v repeated per query head
as the suite loads them, and a GemmaScope-width transcoder per layer); one attribution graph of a 12-token prompt
with random JumpReLU transcoders of GemmaScope's width (16,384 latents; thresholds set for about --l0 active
latents per token), its target batches and one batched backward pass, measured at --layers and scaled to 26
(backward passes cost in proportion to the layers; feature rows in proportion to the active features, capped by
--max-feature-nodes); EAP-IG edge scores (05's method, --ig-steps) of IOI prompts, measured and scaled by layers
(its passes dominate). Estimates, not measurements of gemma-2-2b: the README says so where it quotes them."""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.io import checks, cli  # noqa: E402

app = cli.script_app(__doc__)
GEMMA_2_2B: dict[str, int] = dict(  # google/gemma-2-2b's config.json (the parts that set sizes)
    vocab_size=256000,
    hidden_size=2304,
    intermediate_size=9216,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    num_hidden_layers=26,
)
D_SAE = 16384  # GemmaScope's 16k transcoders (circuit-tracer's `gemma` set)


def gemma_parameters(layers: int) -> tuple[int, int]:
    """(model parameters with k/v repeated per query head, transcoder parameters) at `layers` layers."""
    d, f, h, hd, v = (
        GEMMA_2_2B[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "head_dim", "vocab_size")
    )
    per_layer = 4 * d * h * hd + 3 * d * f + 4 * d  # q, k, v (ungrouped), o; gate, up, down; four norms
    transcoder = 2 * d * D_SAE + 2 * D_SAE + d  # W_enc, W_dec, b_enc, threshold, b_dec
    return v * d + layers * per_layer + d, layers * transcoder


def random_gemma(layers: int, seed: int, device: str):
    import transformers as T

    from lib.core.model import UNPROCESSED, from_hf, gpt2_tokenizer, random_model, resolve_device

    shape: dict = {**GEMMA_2_2B, "num_hidden_layers": layers, "max_position_embeddings": 64}
    cfg = T.Gemma2Config(**shape)
    hf = random_model(T.Gemma2ForCausalLM, cfg, seed=seed)
    return from_hf(
        hf, gpt2_tokenizer(), "gemma-2-2b-shaped", device=str(resolve_device(device)), processing=UNPROCESSED
    )


def random_jumprelu(lm, l0: int, seed: int):
    """Random GemmaScope-shaped JumpReLU transcoders reading ln2's normalized input, thresholds at the quantile
    that leaves about l0 latents active per token on Gaussian inputs."""
    import torch

    from lib.features.transcoders import TranscoderSet

    L, d = lm.n_layers, lm.d_model
    g = torch.Generator().manual_seed(seed)
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - l0 / D_SAE)).item()
    return TranscoderSet(
        "plt",
        "random-gemmascope",
        [f"blocks.{l}.ln2.hook_normalized" for l in range(L)],
        [f"blocks.{l}.hook_mlp_out" for l in range(L)],
        [torch.randn(d, D_SAE, generator=g) / d**0.5 for _ in range(L)],
        [torch.zeros(D_SAE) for _ in range(L)],
        [torch.nn.functional.normalize(torch.randn(D_SAE, 1, d, generator=g), dim=-1) for _ in range(L)],
        torch.zeros(L, d),
        "jumprelu",
        None,
        [torch.full((D_SAE,), z) for _ in range(L)],
    ).to(device=lm.device)


@app.command()
def main(
    layers: int = typer.Option(2, help="layers of gemma-2-2b's 26 actually built"),
    device: cli.DeviceOpt = "auto",
    l0: int = typer.Option(70, help="active transcoder latents per token"),
    max_feature_nodes: int = typer.Option(8192, "--max-feature-nodes", help="circuit-tracer's default cap"),
    target_batch: int = typer.Option(64, "--target-batch"),
    ig_steps: int = typer.Option(5, "--ig-steps"),
    n_prompts: int = typer.Option(8, "--n-prompts", help="IOI prompts of the EAP-IG timing"),
    seed: cli.SeedOpt = 0,
):
    checks.check_between(1, 26, ("--layers", layers))
    import torch

    from lib.core.graph import graph_of
    from lib.features.attribution import _Pass, attribute
    from lib.methods.eap import edge_scores
    from tasks import TASKS

    scale = 26 / layers
    params, tparams = gemma_parameters(26)
    print(
        f"gemma-2-2b at 26 layers: {params / 1e9:.2f} B parameters as loaded ({params * 2 / 2**30:.1f} GiB in "
        f"bfloat16, {params * 4 / 2**30:.1f} GiB in float32); a 16k transcoder per layer: {tparams / 1e9:.2f} B "
        f"({tparams * 4 / 2**30:.1f} GiB float32)"
    )
    t0 = time.perf_counter()
    lm = random_gemma(layers, seed, device)
    print(f"built {layers} layers at gemma-2-2b's widths on {lm.device} in {time.perf_counter() - t0:.1f} s")
    tc = random_jumprelu(lm, l0, seed)
    tokens = torch.randint(0, 50000, (12,), generator=torch.Generator().manual_seed(seed))
    bos = lm.tokenizer.bos_token_id
    tokens[0] = bos if isinstance(bos, int) else 0
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    graph = attribute(lm, tc, tokens, batch_size=target_batch, max_feature_nodes=max_feature_nodes)
    sync()
    wall = time.perf_counter() - t0
    n_active = len(graph.active)
    run = _Pass(
        lm,
        tc,
        tokens,
        target_batch,
        torch.zeros(12, lm.d_model, device=lm.device),
        [torch.zeros(12, lm.d_model, device=lm.device) for _ in range(layers)],
    )
    v = torch.ones(lm.d_model, device=lm.device)
    times = []
    for _ in range(3):
        t1 = time.perf_counter()
        run.rows([(r, "final", 11, v) for r in range(target_batch)])
        sync()
        times.append(time.perf_counter() - t1)
    backward = statistics.median(times)
    rows_26 = min(max_feature_nodes, round(n_active * scale)) + graph.n_logits
    batches_26 = math.ceil(rows_26 / target_batch)
    print(
        f"attribution graph, {layers} layers: {wall:.1f} s, {n_active} active features, "
        f"{math.ceil((graph.n_features + graph.n_logits) / target_batch)} target batches, one backward "
        f"{backward:.2f} s -> 26 layers: about {batches_26} batches x {backward * scale:.2f} s = "
        f"{batches_26 * backward * scale:.0f} s; dense adjacency {4 * (rows_26 + 27 * 12) ** 2 / 2**30:.2f} GiB"
    )
    data = TASKS["ioi"].build(lm.tokenizer, n_prompts, seed)
    g = graph_of(lm)
    t0 = time.perf_counter()
    edge_scores(lm, g, data, method="eap-ig", ig_steps=ig_steps, batch_size=n_prompts)
    sync()
    eap = time.perf_counter() - t0
    print(
        f"EAP-IG ({ig_steps} steps), {n_prompts} IOI prompts, {layers} layers ({g.n_edges:,} edges): {eap:.1f} s "
        f"-> 26 layers (74,218 edges): about {eap * scale / n_prompts:.2f} s per prompt"
    )


if __name__ == "__main__":
    cli.main(app)
