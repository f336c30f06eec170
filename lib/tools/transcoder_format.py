"""Convert a per-layer transcoder set between SAELens's layout and circuit-tracer's (a tool beside the core):

    uv run python -m lib.tools.transcoder_format SRC DST

SRC with circuit-tracer's config.yaml (a transcoder_set, lib.features.published) becomes one SAELens folder
per layer (tc{l}: cfg.json with SAELens's transcoder architecture name and model_from_pretrained_kwargs that
load the model unprocessed, as circuit-tracer does; sae_weights.safetensors with W_enc [d_in, d_sae], and
threshold / W_skip [d_out, d_in] where the set has them). SRC of SAELens folders (one transcoder per layer)
becomes circuit-tracer's layout. What has no encoding on the other side is refused in one line: TopK (no
circuit-tracer encoding; its k stays in cfg.json), and SAELens transcoders trained on processed activations
(circuit-tracer reads the unprocessed model, so it would read other activations than they were trained on)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lib.core.errors import UserError
from lib.io import cli

app = cli.script_app(__doc__)
SAELENS_NAMES = {("standard", False): "transcoder", ("standard", True): "skip_transcoder"}
SAELENS_NAMES |= {("jumprelu", False): "jumprelu_transcoder", ("jumprelu", True): "jumprelu_skip_transcoder"}


def to_saelens(tc, out: Path) -> None:
    """A TranscoderSet (per-layer) as SAELens folders tc{l}, each loading the model unprocessed."""
    from lib.core.model import UNPROCESSED
    from lib.features import files
    from lib.features.dictionary import Dictionary

    if tc.threshold is not None and any(bool((t < 0).any()) for t in tc.threshold):
        raise UserError(
            "a JumpReLU threshold below 0 keeps negative pre-activations in circuit-tracer's JumpReLU but not in "
            "SAELens's (ReLU first): the set has no exact SAELens encoding"
        )
    for l in range(tc.n_layers):
        cfg = {
            "architecture": SAELENS_NAMES[tc.architecture, tc.W_skip is not None],
            "hook_name": tc.hooks_in[l],
            "hook_name_out": tc.hooks_out[l],
            "model_name": tc.cfg.get("model_name") or "",
            "model_from_pretrained_kwargs": {k: False for k in UNPROCESSED},
            "apply_b_dec_to_input": False,
            "normalize_activations": "none",
            "converted_from": tc.cfg.get("format", "circuit-tracer"),
        }
        files.write(
            out / f"tc{l}",
            Dictionary(
                cfg,
                tc.W_enc[l],
                tc.W_dec[l][:, 0],
                tc.b_enc[l],
                tc.b_dec[l],
                None if tc.threshold is None else tc.threshold[l],
                None if tc.W_skip is None else tc.W_skip[l].T.contiguous(),
            ),
        )


@app.command()
def main(
    src: Annotated[
        Path, typer.Argument(help="a per-layer transcoder set (circuit-tracer's config.yaml, or SAELens folders)")
    ],
    dst: Annotated[Path, typer.Argument(help="the converted set's folder (must not exist)")],
):
    from lib.core.errors import user_path
    from lib.core.model import UNPROCESSED
    from lib.features import files, published
    from lib.features.transcoders import TranscoderSet, from_dictionaries

    src, dst = user_path(str(src), "SRC"), user_path(str(dst), "DST")
    if dst.exists():
        raise UserError(f"DST {dst} exists; a converted set is never written over another")
    if not src.is_dir():
        raise UserError(f"SRC {src}: no such folder")
    loaded = files.read_set(src)
    staging = dst.with_name(f".{dst.name}.staging")
    if published.is_published(src):
        tc = next(iter(loaded.values()))
        if tc.kind != "plt":
            raise UserError(
                f"SRC {src} is a cross-layer transcoder: circuit-tracer's CLT layout is the only one it has"
            )
        to_saelens(tc, staging)
    else:
        ones = {n: d for n, d in loaded.items() if not isinstance(d, TranscoderSet) and d.kind == "transcoder"}
        if not ones:
            raise UserError(f"SRC {src}: no per-layer transcoders (SAELens folders with hook_name_out)")
        if files.processing_of(ones, str(src)) != UNPROCESSED:
            raise UserError(
                f"SRC {src}: these transcoders were trained on processed activations (TransformerLens's defaults); "
                "circuit-tracer reads the unprocessed model: train with --layout circuit-tracer instead"
            )
        tc = from_dictionaries(ones, len(ones), str(src))  # one per layer, every layer: else one line
        published.write(staging, tc, model_name=next(iter(ones.values())).cfg.get("model_name"))
    staging.rename(dst)
    print(f"wrote {dst}")


if __name__ == "__main__":
    cli.main(app)
