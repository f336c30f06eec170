"""Copies of a GPT-2-family model (Hugging Face folder) that compute the same function in another basis, to test
model comparisons against a known answer:

  permute SRC DST   MLP neurons permuted in every layer (heads keep their order), and every dictionary of
                    SRC/dictionaries with its features permuted (the permutations saved in permutation.json)
  rotate SRC DST    the residual stream's basis rotated by an orthogonal Q with Q 1 = 1 (saved as rotation.pt)

uv run python -m lib.tools.model_copies rotate models/toy /tmp/toy-rotated

Rotation, with rows as vectors (residual r becomes r Q^T): embeddings and every write (attention and MLP output
projections, their biases) are multiplied by Q^T. A LayerNorm commutes with r -> r Q^T when Q fixes the all-ones
vector (the mean is kept, the norm of the centred vector too), so each norm's weight w is moved into the read that
follows it (W becomes Q diag(w) W) and its bias b becomes (b / w) Q^T with weight 1: LN'(r Q^T) W' = LN(r) W. The
unembedding becomes E diag(w_f) Q^T (untied from the embedding)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import typer

from lib.core.errors import UserError

app = typer.Typer(add_completion=False, help=__doc__)
MODEL_FILES = ("config.json", "model.safetensors")


def _read(src: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    for name in MODEL_FILES:
        if not (src / name).is_file():
            raise UserError(f"{src}: no {name}; a model copy starts from a Hugging Face GPT-2 folder")
    config = json.loads((src / "config.json").read_text())
    if config.get("model_type") != "gpt2":
        raise UserError(f"{src}: model_type {config.get('model_type')!r}; model copies are made of GPT-2 models")
    return config, {k: v.double() for k, v in load_file(src / "model.safetensors").items()}


def _write(src: Path, dst: Path, config: dict, weights: dict) -> None:
    from safetensors.torch import save_file

    if dst.exists():
        raise UserError(f"{dst} exists; a model copy is written to a new folder")
    dst.mkdir(parents=True)
    for p in src.iterdir():  # tokenizer and generation files as they are
        if p.is_file() and p.name not in MODEL_FILES and p.name != "training.json":
            shutil.copy(p, dst / p.name)
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.float().contiguous() for k, v in weights.items()}, dst / "model.safetensors")


def _n_layers(config: dict) -> int:
    return int(config["n_layer"])


def permute(src: Path, dst: Path, seed: int = 0) -> dict:
    """The copy with permuted MLP neurons and dictionary features; returns the permutations (new index i holds
    the old unit perm[i])."""
    from lib.features import files
    from lib.features.dictionary import Dictionary

    config, w = _read(src)
    gen = torch.Generator().manual_seed(seed)
    record: dict = {"mlp": {}, "dictionaries": {}}
    for l in range(_n_layers(config)):
        p = f"transformer.h.{l}.mlp."
        perm = torch.randperm(w[p + "c_fc.weight"].shape[1], generator=gen)
        w[p + "c_fc.weight"], w[p + "c_fc.bias"] = w[p + "c_fc.weight"][:, perm], w[p + "c_fc.bias"][perm]
        w[p + "c_proj.weight"] = w[p + "c_proj.weight"][perm]
        record["mlp"][l] = perm.tolist()
    _write(src, dst, config, w)
    if (src / "dictionaries").is_dir():
        for name, d in files.read_set(src / "dictionaries").items():
            if not isinstance(d, Dictionary):
                continue  # a transcoder set in circuit-tracer's layouts (the CLT): not copied
            perm = torch.randperm(d.d_sae, generator=gen)
            d.W_enc, d.W_dec, d.b_enc = d.W_enc[:, perm], d.W_dec[perm], d.b_enc[perm]
            if d.threshold is not None:
                d.threshold = d.threshold[perm]
            d.cfg = {**d.cfg, "model_name": str(dst)}  # the copy, as --model names it by this path
            files.write(dst / "dictionaries" / name, d)
            record["dictionaries"][name] = perm.tolist()
    (dst / "permutation.json").write_text(json.dumps(record) + "\n")
    return record


def orthogonal_fixing_ones(d: int, seed: int) -> torch.Tensor:
    """A random orthogonal [d, d] Q (float64) with Q 1 = 1: a rotation of the space orthogonal to the ones."""
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.cat([torch.ones(d, 1), torch.randn(d, d - 1, generator=gen)], 1).double())
    basis[:, 0] = basis[:, 0].sign() * basis[:, 0]  # the first column is +-1/sqrt(d); make it +
    inner, _ = torch.linalg.qr(torch.randn(d - 1, d - 1, generator=gen, dtype=torch.float64))
    block = torch.block_diag(torch.ones(1, 1, dtype=torch.float64), inner)
    return basis @ block @ basis.T


def rotate(src: Path, dst: Path, seed: int = 0) -> torch.Tensor:
    """The rotated copy; returns Q (new residual = old residual @ Q^T)."""
    config, w = _read(src)
    d = int(config["n_embd"])
    q = orthogonal_fixing_ones(d, seed)
    lm_head = w.pop("lm_head.weight", w["transformer.wte.weight"]).clone()

    def move_norm(norm: str, reads: list[str]) -> None:
        weight, bias = w[norm + ".weight"], w[norm + ".bias"]
        if (weight == 0).any():
            raise UserError(f"{src}: {norm} has a zero weight; its bias cannot be moved through it")
        for read in reads:  # Conv1D weights are [d_in, d_out]: rows read the residual
            w[read] = q @ (weight[:, None] * w[read])
        w[norm + ".weight"], w[norm + ".bias"] = torch.ones_like(weight), (bias / weight) @ q.T

    w["transformer.wte.weight"] = w["transformer.wte.weight"] @ q.T
    w["transformer.wpe.weight"] = w["transformer.wpe.weight"] @ q.T
    for l in range(_n_layers(config)):
        p = f"transformer.h.{l}."
        move_norm(p + "ln_1", [p + "attn.c_attn.weight"])
        move_norm(p + "ln_2", [p + "mlp.c_fc.weight"])
        for write in ("attn.c_proj", "mlp.c_proj"):
            w[p + write + ".weight"] = w[p + write + ".weight"] @ q.T
            w[p + write + ".bias"] = w[p + write + ".bias"] @ q.T
    final_w, final_b = w["transformer.ln_f.weight"], w["transformer.ln_f.bias"]
    if (final_w == 0).any():
        raise UserError(f"{src}: ln_f has a zero weight; its bias cannot be moved through it")
    w["lm_head.weight"] = (lm_head * final_w[None]) @ q.T
    w["transformer.ln_f.weight"], w["transformer.ln_f.bias"] = torch.ones_like(final_w), (final_b / final_w) @ q.T
    config["tie_word_embeddings"] = False
    _write(src, dst, config, w)
    torch.save(q, dst / "rotation.pt")
    return q


@app.command("permute")
def permute_cmd(src: Path, dst: Path, seed: int = 0):
    """Copy SRC to DST with MLP neurons and dictionary features permuted."""
    permute(src, dst, seed)
    print(f"wrote {dst}")


@app.command("rotate")
def rotate_cmd(src: Path, dst: Path, seed: int = 0):
    """Copy SRC to DST with the residual stream's basis rotated."""
    rotate(src, dst, seed)
    print(f"wrote {dst}")


if __name__ == "__main__":
    from lib.io.cli import guarded

    guarded("model_copies", lambda: typer.main.get_command(app).main(standalone_mode=False))
