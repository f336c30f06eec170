"""Train sparse dictionaries for a model (a tool beside the core, as lib.tools.toy trains the toy model):

    uv run python -m lib.tools.dictionaries --model toy --out models/toy/dictionaries     # the shipped set

TopK dictionaries (Gao et al. 2024, "Scaling and evaluating sparse autoencoders") with their auxiliary loss
against dead latents (AuxK: the k_aux = d_in / 2 largest pre-activations of latents dead for `dead_after`
tokens reconstruct the main reconstruction's residual, coefficient 1/32, as SAELens's topk_sae.py
calculate_topk_aux_loss computes it, scaled down while few latents are dead), decoder rows kept at unit norm,
Adam. Sites: the embedding, per layer the attention output, MLP output and residual stream (SAEs), and per
layer an MLP transcoder (blocks.l.ln2.hook_normalized -> blocks.l.hook_mlp_out), and one cross-layer transcoder
`clt` (Ameisen et al. 2025: layer l's features read blocks.l.ln2.hook_normalized and write the MLP outputs of
layers l..L-1; TopK per layer, AuxK over each layer's dead latents, each feature's concatenated decoder kept at
unit norm; written in circuit-tracer's CLT layout, lib.features.transcoders). Activations: every position
of the clean and corrupted prompts of the four tasks, generated with training seeds (the toy model's training
distribution is these tasks). Deterministic: seeded, one CPU thread, so the same command gives bit-identical
weights. Writes each dictionary in SAELens's layout and report.csv: fraction of variance unexplained, L0, dead
fraction, and the model's KL and task metric with that dictionary spliced in without its error node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lib.core.errors import UserError
from lib.io import checks, cli, progress

app = cli.script_app(__doc__)
TRAIN_SEED = 20_000  # task seeds for activations (the toy model trained on 10_000+, evaluation uses < 10_000)
EVAL_SEED = 3  # prompts of the report's spliced evaluation
AUX_COEFFICIENT = 1 / 32  # Gao et al. 2024, section A.2


def sites(n_layers: int) -> dict[str, tuple[str, str]]:
    """Site name -> (input hook, output hook); SAEs read and write one hook."""
    out = {"embed": ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_pre")}
    for l in range(n_layers):
        out |= {
            f"attn{l}": (f"blocks.{l}.hook_attn_out", f"blocks.{l}.hook_attn_out"),
            f"mlp{l}": (f"blocks.{l}.hook_mlp_out", f"blocks.{l}.hook_mlp_out"),
            f"resid{l}": (f"blocks.{l}.hook_resid_post", f"blocks.{l}.hook_resid_post"),
            f"tc{l}": (f"blocks.{l}.ln2.hook_normalized", f"blocks.{l}.hook_mlp_out"),
        }
    out["clt"] = ("blocks.{layer}.ln2.hook_normalized", "blocks.{layer}.hook_mlp_out")  # every layer
    return out


def site_hooks(site: str, hooks: tuple, n_layers: int) -> tuple[list, list]:
    """The input and output hooks a site's training reads ({layer} templates expanded for the CLT)."""
    if "{layer}" in hooks[0]:
        return [hooks[0].format(layer=l) for l in range(n_layers)], [hooks[1].format(layer=l) for l in range(n_layers)]
    return [hooks[0]], [hooks[1]]


def activations(model, hooks: list[str], n_per_task: int, seed: int, batch_size: int = 64) -> dict:
    """{hook: [T, d]} at every real (non-pad) position of the tasks' clean and corrupted prompts."""
    import torch

    from lib.core.forward import capture
    from tasks import TASK_NAMES, TASKS

    out = {h: [] for h in hooks}
    for i, name in enumerate(TASK_NAMES):
        data = TASKS[name].build(model.tokenizer, n_per_task, seed + i)
        for tokens in (data.clean, data.corrupt):
            for start in range(0, len(data), batch_size):
                t = tokens[start : start + batch_size]
                real = data.real[start : start + batch_size]  # [B, P]
                cache = capture(model, t, hooks)
                for h in hooks:
                    out[h].append(cache[h][real.to(cache[h].device)].float().cpu())
    return {h: torch.cat(v) for h, v in out.items()}


def train_one(
    x, y, width: int, k: int, steps: int, batch: int, lr: float, seed: int, dead_after: int, cfg: dict, bar=None
):
    """A dictionary from inputs x [T, d_in] to targets y [T, d_out] (y is x for an SAE): TopK with AuxK, or ReLU
    (cfg architecture standard / transcoder) with an L1 penalty cfg["training"]["l1"] on the activations (decoder
    rows at unit norm, so it is SAELens's standard L1 times the decoder norms)."""
    import torch

    from lib.features.dictionary import Dictionary

    g = torch.Generator().manual_seed(seed)
    d_in, d_out = x.shape[1], y.shape[1]
    w_dec = torch.nn.functional.normalize(torch.randn(width, d_out, generator=g), dim=-1)
    params = {
        "W_enc": (w_dec.T.clone() if d_in == d_out else torch.randn(d_in, width, generator=g) / d_in**0.5),
        "W_dec": w_dec,
        "b_enc": torch.zeros(width),
        "b_dec": y.mean(0).clone(),
    }
    params = {n: p.requires_grad_(True) for n, p in params.items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    dictionary = Dictionary(cfg, **params)
    since_fired = torch.zeros(width)
    k_aux = d_in // 2
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb, yb = x[idx], y[idx]
        pre = dictionary.pre(xb)
        f = dictionary.activate(pre)
        out = dictionary.decode(f)
        loss = (out - yb).pow(2).sum(-1).mean()
        if dictionary.architecture == "standard":
            loss = loss + cfg["training"]["l1"] * f.sum(-1).mean()
        since_fired = torch.where((f > 0).any(0), torch.zeros_like(since_fired), since_fired + batch)
        dead = since_fired >= dead_after
        if (
            dead.any() and dictionary.architecture == "topk"
        ):  # AuxK: the top dead latents reconstruct the residual (SAELens's calculate_topk_aux_loss)
            n_dead = int(dead.sum())
            top = torch.where(dead[None], pre, torch.full_like(pre, -torch.inf)).topk(min(k_aux, n_dead), dim=-1)
            aux = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
            residual = (yb - out).detach()
            loss = (
                loss
                + AUX_COEFFICIENT * min(n_dead / k_aux, 1.0) * (dictionary.decode(aux) - residual).pow(2).sum(-1).mean()
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            params["W_dec"].div_(params["W_dec"].norm(dim=-1, keepdim=True))
        if bar is not None:
            bar.update(1)
    return Dictionary(cfg, *(params[n].detach().clone() for n in ("W_enc", "W_dec", "b_enc", "b_dec")))


def train_clt(
    xs: list,
    ys: list,
    width: int,
    k: int,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    dead_after: int,
    cfg: dict,
    hooks_in: list,
    hooks_out: list,
    bar=None,
):
    """A TopK cross-layer transcoder from per-layer inputs xs (L x [T, d_in]) to MLP outputs ys (L x [T, d_out]),
    the same tokens in every layer."""
    import torch

    from lib.features.transcoders import TranscoderSet

    g = torch.Generator().manual_seed(seed)
    L, d_in, d_out = len(xs), xs[0].shape[1], ys[0].shape[1]
    x, y = torch.stack(xs, 1), torch.stack(ys, 1)  # [T, L, d]
    w_enc = [(torch.randn(d_in, width, generator=g) / d_in**0.5).requires_grad_(True) for _ in range(L)]
    b_enc = [torch.zeros(width, requires_grad=True) for _ in range(L)]
    w_dec = []
    for l in range(L):
        w = torch.randn(width, L - l, d_out, generator=g)
        w_dec.append((w / w.flatten(1).norm(dim=-1)[:, None, None]).requires_grad_(True))
    b_dec = y.mean(0).clone().requires_grad_(True)  # [L, d_out]
    opt = torch.optim.Adam([*w_enc, *b_enc, *w_dec, b_dec], lr=lr)
    tc = TranscoderSet("clt", "clt", hooks_in, hooks_out, w_enc, b_enc, w_dec, b_dec, "topk", k, cfg=cfg)
    since_fired = torch.zeros(L, width)
    k_aux = d_in // 2
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb, yb = x[idx], y[idx]
        pre = {l: tc.pre(l, xb[:, l]) for l in range(L)}
        f = {l: tc.activate(l, pre[l]) for l in range(L)}
        out = torch.stack([tc.write(j, f) for j in range(L)], 1)  # [batch, L, d_out]
        loss = (out - yb).pow(2).sum(-1).sum(-1).mean()
        fired = torch.stack([(f[l] > 0).any(0) for l in range(L)])
        since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + batch)
        dead = since_fired >= dead_after  # [L, width]
        if dead.any():  # AuxK per layer: its dead latents' top pre-activations reconstruct the residual they write
            aux = {}
            for l in range(L):
                n_dead = int(dead[l].sum())
                if n_dead:
                    top = torch.where(dead[l][None], pre[l], torch.full_like(pre[l], -torch.inf)).topk(
                        min(k_aux, n_dead), -1
                    )
                    aux[l] = torch.zeros_like(pre[l]).scatter(-1, top.indices, top.values)
            # (a layer no dead latent reaches writes only b_dec: broadcast to the batch)
            aux_out = torch.stack([(tc.write(j, aux) - b_dec[j]).expand(batch, d_out) for j in range(L)], 1)
            residual = (yb - out).detach()
            scale = min(float(dead.sum()) / (k_aux * L), 1.0)
            loss = loss + AUX_COEFFICIENT * scale * (aux_out - residual).pow(2).sum(-1).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for w in w_dec:
                w.div_(w.flatten(1).norm(dim=-1)[:, None, None])
        if bar is not None:
            bar.update(1)
    return TranscoderSet(
        "clt",
        "clt",
        hooks_in,
        hooks_out,
        [w.detach().clone() for w in w_enc],
        [b.detach().clone() for b in b_enc],
        [w.detach().clone() for w in w_dec],
        b_dec.detach().clone(),
        "topk",
        k,
        cfg=cfg,
    )


def spliced_columns(model, hooks: list) -> dict:
    """The report's model columns for a dictionary spliced in by hooks (no error nodes): KL from the model at the
    answer, mean over the tasks, and each task's metric spliced and in the model (32 prompts per task)."""
    import torch

    from lib.core.forward import logits_at
    from lib.core.metrics import data_metric, kl_divergence
    from tasks import TASK_NAMES, TASKS

    kls, metrics, clean = [], [], []
    with torch.no_grad():
        for name in TASK_NAMES:
            data = TASKS[name].build(model.tokenizer, 32, EVAL_SEED)
            full = logits_at(model, data.clean, data.answer_pos)
            spliced = logits_at(model, data.clean, data.answer_pos, hooks=hooks)
            kls.append(float(kl_divergence(full, spliced).mean()))
            metrics.append(float(data_metric(spliced, data).mean()))
            clean.append(float(data_metric(full, data).mean()))
    return {
        "kl_spliced": sum(kls) / len(kls),
        **{f"metric_{t}": m for t, m in zip(TASK_NAMES, metrics)},
        **{f"metric_{t}_model": m for t, m in zip(TASK_NAMES, clean)},
    }


def clt_report_row(model, name: str, tc, xs: list, ys: list) -> dict:
    """The report's row of a CLT: FVU and L0 over every layer, dead fraction, and the model with every MLP
    replaced by it (no error nodes)."""
    import torch

    from lib.features.replacement import replacement_hooks
    from lib.features.transcoders import hook_template

    with torch.no_grad():
        L = tc.n_layers
        f = {l: tc.encode(l, xs[l]) for l in range(L)}
        out = torch.stack([tc.write(j, f) for j in range(L)])
        y = torch.stack(ys)
        fvu = float((out - y).pow(2).sum() / (y - y.mean(1, keepdim=True)).pow(2).sum())
        row = {
            "dictionary": name,
            "kind": "clt",
            "hook_name": hook_template(tc.hooks_in),
            "hook_name_out": hook_template(tc.hooks_out),
            "d_sae": tc.d_sae,
            "k": tc.k,
            "fvu": fvu,
            "l0": float(sum((f[l] > 0).sum(-1).float().mean() for l in range(L)) / L),
            "dead_fraction": float(sum(((f[l] > 0).sum(0) == 0).float().mean() for l in range(L)) / L),
        }
        row |= spliced_columns(model, replacement_hooks(tc, range(L)))
    return row


def report_row(model, name: str, d, x, y) -> dict:
    """FVU, L0 and dead fraction on held-out activations, and the model with d spliced in without its error."""
    import torch

    from lib.features.splice import splice_hooks

    with torch.no_grad():
        f = d.encode(x)
        fvu = float((d.reconstruct(f, x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
        row = {
            "dictionary": name,
            "kind": d.kind,
            "hook_name": d.hook_name,
            "hook_name_out": d.hook_name_out,
            "d_sae": d.d_sae,
            "k": d.k,
            "fvu": fvu,
            "l0": float((f > 0).sum(-1).float().mean()),
            "dead_fraction": float(((f > 0).sum(0) == 0).float().mean()),
        }
        row |= spliced_columns(model, splice_hooks({name: d}, with_error=False))
    return row


@app.command()
def main(
    out: Annotated[Path, typer.Option("--out", help="the set's folder (one folder per dictionary)")],
    model: cli.ModelOpt = "toy",
    only: Annotated[
        str, typer.Option("--sites", help="space-separated sites (embed, attn0, mlp0, resid0, tc0, ..., clt), or all")
    ] = "all",
    width: Annotated[int, typer.Option(help="latents per dictionary")] = 256,
    k: Annotated[int, typer.Option(help="active latents per token (TopK)")] = 8,
    activation: Annotated[
        str, typer.Option("--activation", help="topk (with AuxK) | relu (with an L1 penalty, --l1)")
    ] = "topk",
    l1: Annotated[float, typer.Option("--l1", help="L1 coefficient of --activation relu")] = 3e-3,
    layout: Annotated[
        str,
        typer.Option(
            "--layout",
            help="saelens (one folder per dictionary) | circuit-tracer (the tc sites as one per-layer set read "
            "by circuit-tracer: trained on the unprocessed model, --activation relu)",
        ),
    ] = "saelens",
    steps: Annotated[int, typer.Option(help="optimizer steps per dictionary")] = 3000,
    batch: Annotated[int, typer.Option(help="tokens per step")] = 256,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 1e-3,
    n_per_task: Annotated[int, typer.Option("--n-per-task", help="prompts per task (clean and corrupted)")] = 400,
    seed: cli.SeedOpt = 0,
    quiet: cli.QuietOpt = False,
):
    checks.check_between(1, 1 << 20, ("--width", width), ("--steps", steps), ("--batch", batch))
    checks.check_between(1, width, ("--k", k))
    checks.check_between(2, cli.MAX_PROMPTS, ("--n-per-task", n_per_task))
    checks.check_finite("--lr", lr)
    checks.check_finite("--l1", l1)
    if activation not in ("topk", "relu"):
        raise UserError(f"unknown --activation {activation!r}; choose from topk, relu")
    if layout not in ("saelens", "circuit-tracer"):
        raise UserError(f"unknown --layout {layout!r}; choose from saelens, circuit-tracer")
    if layout == "circuit-tracer" and activation != "relu":
        raise UserError(
            "--layout circuit-tracer needs --activation relu: TopK has no circuit-tracer encoding (its TopK keeps "
            "negative top-k values, where this project applies ReLU); a TopK set keeps its k in SAELens's cfg.json"
        )
    if out.exists():
        raise UserError(f"--out {out} exists; a dictionary set is never overwritten")
    progress.set_quiet(quiet)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical weights on any CPU count
    try:
        _train_set(out, model, only, width, k, steps, batch, lr, n_per_task, seed, activation, l1, layout)
    finally:
        torch.set_num_threads(threads)  # a caller in this process (tests) keeps its own


def _train_set(
    out: Path,
    model: str,
    only: str,
    width: int,
    k: int,
    steps: int,
    batch: int,
    lr: float,
    n_per_task: int,
    seed: int,
    activation: str = "topk",
    l1: float = 0.0,
    layout: str = "saelens",
) -> None:
    import pandas as pd
    import torch

    from lib.core.model import PROCESSED, UNPROCESSED, load_model
    from lib.features import files
    from lib.features.transcoders import write_clt

    unprocessed = layout == "circuit-tracer"  # circuit-tracer reads the model as loaded without processing
    lm = load_model(model, device="cpu", seed=seed, processing=UNPROCESSED if unprocessed else PROCESSED)
    table = sites(lm.n_layers)
    if unprocessed:
        table = {s: h for s, h in table.items() if s.startswith("tc")}
    chosen = list(table) if only.split() == ["all"] else only.split()
    unknown = [s for s in chosen if s not in table]
    if unknown:
        raise UserError(f"unknown site {', '.join(unknown)}; sites of {model} ({layout}): {', '.join(table)} or all")
    if unprocessed and sorted(chosen) != sorted(table):
        raise UserError(
            "--layout circuit-tracer trains every layer's transcoder (--sites all): a set covers every layer"
        )
    if activation == "relu" and "clt" in chosen:
        raise UserError("the cross-layer transcoder trains TopK only; leave clt out of --sites with --activation relu")
    hooks = sorted({h for s in chosen for part in site_hooks(s, table[s], lm.n_layers) for h in part})
    train_acts = activations(lm, hooks, n_per_task, TRAIN_SEED + 100 * seed)
    held_acts = activations(lm, hooks, max(8, n_per_task // 10), TRAIN_SEED + 100 * seed + 50)
    staging = out.with_name(f".{out.name}.staging")
    rows, trained = [], {}
    with progress.bar(steps * len(chosen), "dictionary training", "step") as bar:
        for name in chosen:
            i = list(table).index(name)  # the site's own seed: a subset of sites trains each as the full set does
            hook_in, hook_out = table[name]
            training = {
                "trainer": "lib.tools.dictionaries",
                "steps": steps,
                "batch": batch,
                "lr": lr,
                "n_per_task": n_per_task,
                "seed": seed,
                "aux_coefficient": AUX_COEFFICIENT,
                **({"l1": l1} if activation == "relu" else {}),
            }
            if "{layer}" in hook_in:  # the cross-layer transcoder
                ins, outs = site_hooks(name, table[name], lm.n_layers)
                torch.manual_seed(seed + i)
                tc = train_clt(
                    [train_acts[h] for h in ins],
                    [train_acts[h] for h in outs],
                    width,
                    k,
                    steps,
                    batch,
                    lr,
                    seed * 1000 + i,
                    dead_after=20 * batch,
                    cfg={"model_name": lm.name, "training": training},
                    hooks_in=ins,
                    hooks_out=outs,
                    bar=bar,
                )
                write_clt(staging / name, tc)
                rows.append(clt_report_row(lm, name, tc, [held_acts[h] for h in ins], [held_acts[h] for h in outs]))
                continue
            cfg = {
                "architecture": "topk" if activation == "topk" else "standard" if hook_in == hook_out else "transcoder",
                "k": k if activation == "topk" else None,
                "hook_name": hook_in,
                "model_name": lm.name,
                "apply_b_dec_to_input": hook_in == hook_out,
                "normalize_activations": "none",
                "training": training,
            }
            if hook_in != hook_out:
                cfg["hook_name_out"] = hook_out
            if unprocessed:  # SAELens loads the model as these were trained (HookedTransformer kwargs)
                cfg["model_from_pretrained_kwargs"] = {key: False for key in UNPROCESSED}
            torch.manual_seed(seed + i)
            d = train_one(
                train_acts[hook_in],
                train_acts[hook_out],
                width,
                k,
                steps,
                batch,
                lr,
                seed * 1000 + i,
                dead_after=20 * batch,
                cfg=cfg,
                bar=bar,
            )
            if unprocessed:
                trained[name] = d
            else:
                files.write(staging / name, d)
            rows.append(report_row(lm, name, d, held_acts[hook_in], held_acts[hook_out]))
    if unprocessed:  # one per-layer set in circuit-tracer's layout (config.yaml + layer_{l}.safetensors)
        from lib.features import published
        from lib.features.transcoders import from_dictionaries

        published.write(staging, from_dictionaries(trained, lm.n_layers, str(out)), model_name=lm.name)
    pd.DataFrame(rows).to_csv(staging / "report.csv", index=False, float_format="%.6g")
    summary = {"model": lm.name, "sites": chosen, "width": width, "k": k if activation == "topk" else None}
    summary |= {"activation": activation, "layout": layout, "processing": lm.processing}
    (staging / "set.json").write_text(json.dumps(summary) + "\n")
    staging.rename(out)
    print(pd.DataFrame(rows)[["dictionary", "fvu", "l0", "dead_fraction", "kl_spliced"]].to_string(index=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.main(app)
