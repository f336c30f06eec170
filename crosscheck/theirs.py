"""circuit-tracer 0.5.0's and SAELens's side of the cross-check (README, "Published transcoder sets"). Runs in its
own environment, never this project's (both pin TransformerLens 3):

    uv venv /tmp/peers && uv pip install --python /tmp/peers/bin/python circuit-tracer==0.5.0 sae-lens
    /tmp/peers/bin/python crosscheck/theirs.py /tmp/crosscheck

For each set written by crosscheck/ours.py: circuit-tracer's load_transcoders reads it, its encode_layer / decode
give our features and outputs, and its attribute() on the unprocessed toy model (a HookedTransformer built from
the toy weights, as its from_pretrained_and_transcoders loads models) gives our active features and adjacency;
SAELens's SAE.load_from_disk reads the SAELens conversions with the same features and outputs."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch
import yaml
from circuit_tracer.attribution.attribute import attribute
from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
from circuit_tracer.utils.hf_utils import load_transcoders
from sae_lens import SAE
from transformer_lens import HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
from transformers import AutoTokenizer, GPT2LMHeadModel

TOY = Path(__file__).resolve().parent.parent / "models" / "toy"


def toy_replacement_model(transcoders):
    hf = GPT2LMHeadModel.from_pretrained(TOY).eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        d_head=c.n_embd // c.n_head,
        n_heads=c.n_head,
        d_mlp=c.n_inner,
        d_vocab=c.vocab_size,
        n_ctx=c.n_positions,
        act_fn="gelu_new",
        normalization_type="LN",
        eps=c.layer_norm_epsilon,
        original_architecture="GPT2LMHeadModel",
        default_prepend_bos=False,
    )
    model = TransformerLensReplacementModel(cfg, tokenizer=AutoTokenizer.from_pretrained(TOY))
    model.load_and_process_state_dict(
        convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False, center_unembed=False
    )
    model._configure_replacement_model(transcoders)
    return model


def main(root: Path) -> None:
    warnings.filterwarnings("ignore")
    ours = torch.load(root / "ours.pt")
    for name in ("trained", "skip", "gemmascope"):
        cfg = yaml.safe_load((root / name / "config.yaml").read_text())
        cfg["transcoders"] = [os.path.join(root / name, p) for p in cfg["transcoders"]]
        cfg["repo_id"] = "google/gemma-scope-local" if name == "gemmascope" else ""  # its npz loader's switch
        cfg.setdefault("scan", name)
        ts = load_transcoders(cfg, device=torch.device("cpu"), lazy_encoder=False, lazy_decoder=False)
        o = ours[name]
        x = o["x"]
        worst = 0.0
        for l, (f, out) in o["layers"].items():
            theirs = ts.encode_layer(x, l)
            worst = max(worst, (theirs - f).abs().max().item(), (ts[l].decode(theirs, x) - out).abs().max().item())
        graph = attribute(
            ours["tokens"], toy_replacement_model(ts), max_n_logits=10, desired_logit_prob=0.95, batch_size=64
        )
        A = graph.adjacency_matrix.float().cpu()
        same = torch.equal(graph.active_features.cpu(), o["active"]) and A.shape == o["adjacency"].shape
        gap = (A - o["adjacency"]).abs().max().item() if same else float("nan")
        line = f"{name}: circuit-tracer features/outputs max |diff| {worst:.2g}; graph {tuple(A.shape)}, "
        line += f"active features equal {same}, adjacency max |diff| {gap:.2g} (max |entry| {A.abs().max():.3g})"
        if (root / f"saelens-{name}").exists():
            diff = 0.0
            for l, (f, out) in o["layers"].items():
                sae = SAE.load_from_disk(str(root / f"saelens-{name}" / f"tc{l}"), device="cpu")
                feats = sae.encode(x)
                recon = sae.forward(x) if hasattr(sae, "W_skip") else sae.decode(feats)
                diff = max(diff, (feats - f).abs().max().item(), (recon - out).abs().max().item())
            line += f"; SAELens {type(sae).__name__} max |diff| {diff:.2g}"
        print(line)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
