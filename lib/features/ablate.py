"""A feature circuit evaluated by ablating every node outside it, as Marks et al.'s ablation.py
(run_with_ablations) does: one clean pass in which each site, in forward order, encodes its current input,
keeps the circuit's features and error nodes, replaces the others by the ablation value, and writes
decode(features) + error. Faithfulness (m(C) - m(empty)) / (m(M) - m(empty)) and completeness (the same for the
complement of C) use it (09_feature_circuits.py).

Ablation values, from the reference prompts' own features and errors (the corrupted prompts): `mean` (Marks et
al.'s default: the mean over the reference prompts at each position, over the prompts that reach it),
`resample` (each prompt's own corrupted counterpart, position by position: the suite's resample, DEFINITIONS.md, Patching an edge; Marks
et al.'s code draws a random other prompt of the batch instead), `zero`.
Error nodes (`errors`): `default` (kept when in the circuit, ablated otherwise), `keep` (always kept), `remove`
(always zero: with every feature kept this is the replacement model, the dictionaries spliced without errors;
Marks et al.'s code comment says zero, its code substitutes the ablation value: we follow the comment, so
that the identity holds)."""

from __future__ import annotations

import torch

from lib.core.choices import FEATURE_ABLATIONS as ABLATIONS  # noqa: F401 (re-exported)
from lib.core.forward import stop_before_unembedding, unembed_at
from lib.core.metrics import data_metric

ERRORS = ("default", "keep", "remove")


def reference_values(model, dictionaries: dict, reference, ablation: str, batch_size: int | None = None) -> dict:
    """Per site {"features": [P, d_sae], "error": [P, d_out]} (resample: [N, P, ...], one row per prompt of
    reference, which must then be the evaluated prompts themselves): what an ablated node carries. The reference
    prompts are read batch_size at a time (default: all)."""
    from lib.features.effects import node_states

    width, step = reference.clean.shape[1], batch_size or len(reference)
    sums, counts, rows = {}, torch.zeros(width, 1, device=model.device), {}
    for start in range(0, len(reference), step):
        batch = reference.subset(slice(start, start + step))
        real = batch.real.to(model.device)[..., None].float()  # [B, P_b, 1]
        pad = width - real.shape[1]
        counts += torch.nn.functional.pad(real.sum(0), (0, 0, 0, pad))
        for site, parts in node_states(model, dictionaries, batch.corrupt.to(model.device)).items():
            padded = {k: torch.nn.functional.pad(v, (0, 0, 0, pad)) for k, v in parts.items()}  # [B, P, ...]
            if ablation == "resample":
                rows.setdefault(site, []).append(padded)
            else:
                total = {k: (v * torch.nn.functional.pad(real, (0, 0, 0, pad))).sum(0) for k, v in padded.items()}
                sums[site] = total if site not in sums else {k: sums[site][k] + v for k, v in total.items()}
    if ablation == "resample":
        return {s: {k: torch.cat([b[k] for b in batches]) for k in batches[0]} for s, batches in rows.items()}
    if ablation == "zero":
        return {s: {k: torch.zeros_like(v) for k, v in parts.items()} for s, parts in sums.items()}
    return {s: {k: v / counts.clamp_min(1) for k, v in parts.items()} for s, parts in sums.items()}


def ablated_metric(
    model,
    dictionaries: dict,
    data,
    keep: dict,
    values: dict,
    errors: str = "default",
    complement: bool = False,
    batch_size: int | None = None,
) -> torch.Tensor:
    """The task metric [N] with every node outside keep ablated to values (reference_values), batch_size prompts
    per pass (default: all). keep: per site {"features": bool [N, P, d_sae], "error": bool [N, P]}; complement:
    ablate keep instead."""
    if errors not in ERRORS:
        raise ValueError(f"errors {errors!r}: choose from {ERRORS}")
    step = batch_size or len(data)
    parts = []
    for start in range(0, len(data), step):
        rows = slice(start, start + step)
        batch_keep = {s: {k: v[rows] for k, v in masks.items()} for s, masks in keep.items()}
        batch_values = {s: {k: v[rows] if v.dim() == 3 else v for k, v in vals.items()} for s, vals in values.items()}
        parts.append(
            _ablated_batch(model, dictionaries, data.subset(rows), batch_keep, batch_values, errors, complement)
        )
    return torch.cat(parts)


def _ablated_batch(
    model, dictionaries: dict, data, keep: dict, values: dict, errors: str, complement: bool
) -> torch.Tensor:
    from lib.features.splice import at_output
    from lib.features.splice import site as site_of

    tokens = data.clean.to(model.device)
    hooks = []
    for d in dictionaries.values():
        s = site_of(d)
        mask_f, mask_e = keep[s]["features"].to(model.device), keep[s]["error"].to(model.device)
        if complement:
            mask_f, mask_e = ~mask_f, ~mask_e
        if errors == "keep":
            mask_e = torch.ones_like(mask_e)

        def ablate(source, x, _s=s, _d=d, _mf=mask_f, _me=mask_e):
            p = x.shape[1]
            value_f, value_e = values[_s]["features"], values[_s]["error"]
            if value_f.dim() == 2:  # one value per position for every prompt (mean, zero)
                value_f, value_e = value_f[None], value_e[None]
            if p > value_f.shape[1]:
                raise ValueError(f"prompts of {p} positions, ablation values of {value_f.shape[1]}")
            f = _d.encode(source)
            error = x - _d.decode(f).to(x.dtype)
            f = torch.where(_mf[:, :p], f, value_f[:, :p])
            if errors == "remove":
                error = torch.zeros_like(error)
            else:
                error = torch.where(_me[:, :p, None], error, value_e[:, :p].to(x.dtype))
            return (_d.decode(f) + error).to(x.dtype)

        hooks += at_output(d, ablate)
    with torch.no_grad():
        resid = model.bridge.run_with_hooks(tokens, fwd_hooks=[*hooks, stop_before_unembedding()])
        return data_metric(unembed_at(model, resid, data.answer_pos.to(resid.device)), data)


def every_node(dictionaries: dict, data, value: bool = True) -> dict:
    """keep masks holding every node (value True) or none (False) of every site, for data's prompts."""
    from lib.features.splice import site as site_of

    n, p = data.clean.shape
    return {
        site_of(d): {"features": torch.full((n, p, d.d_sae), value), "error": torch.full((n, p), value)}
        for d in dictionaries.values()
    }
