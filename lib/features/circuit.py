"""Feature circuits from node effects (lib.features.effects): nodes, their mean effects over prompts, circuits
by node threshold, and their faithfulness and completeness under ablation (lib.features.ablate), as Marks et
al. (2024) define them: faithfulness = (m(C) - m(empty)) / (m(M) - m(empty)), completeness the same for the
complement M \\ C, each a ratio of means over the prompts.

Nodes: with `sum` aggregation (Marks et al.'s `--aggregation sum`) a node is a site's feature (or its error
node) with its effect summed over positions; with `none`, a node is also at one position, counted from the
answer position (`end`, `end-1`, ...) so that prompts of different lengths align. Node names: `{site}/f{index}`
or `{site}/err`, with `@{position}` under `none` (DEFINITIONS.md, Features)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lib.core.choices import FEATURE_AGGREGATIONS as AGGREGATIONS  # noqa: F401 (re-exported)


def position_name(offset: int) -> str:
    return "end" if offset == 0 else f"end{offset}"


@dataclass
class NodeEffects:
    """Mean effect over prompts per node: features[site] [Q, d_sae] and errors[site] [Q], Q = 1 (sum) or the
    positions counted back from the answer (none: row q is offset -q)."""

    aggregation: str
    features: dict
    errors: dict

    def table(self) -> list[dict]:
        """One row per node with a nonzero effect: site, node name, feature (-1: error), position, effect."""
        rows = []
        for site in self.features:
            f, e = self.features[site].cpu().numpy(), self.errors[site].cpu().numpy()
            for q in range(f.shape[0]):
                at = "" if self.aggregation == "sum" else f"@{position_name(-q)}"
                for i in np.flatnonzero(f[q]):
                    rows.append(
                        {
                            "site": site,
                            "node": f"{site}/f{i}{at}",
                            "feature": int(i),
                            "position": at[1:],
                            "effect": float(f[q, i]),
                        }
                    )
                rows.append(
                    {"site": site, "node": f"{site}/err{at}", "feature": -1, "position": at[1:], "effect": float(e[q])}
                )
        return rows

    def magnitudes(self) -> np.ndarray:
        """|effect| of every node, features and errors, flattened (for thresholds and sizes)."""
        return np.concatenate(
            [
                np.abs(np.r_[self.features[s].cpu().numpy().ravel(), self.errors[s].cpu().numpy().ravel()])
                for s in self.features
            ]
        )


class Accumulator:
    """Mean effect per node over prompts, accumulated batch by batch (never every prompt's dense effects at
    once): `sum` sums over positions; `none` aligns each prompt's positions at its answer (row q = offset -q)."""

    def __init__(self, aggregation: str):
        self.aggregation, self.sums, self.counts = aggregation, {}, {}

    def add(self, effects: dict, lengths: torch.Tensor) -> None:
        for site, parts in effects.items():
            f, e = parts["features"].float().cpu(), parts["error"].float().cpu()  # [N, P, d_sae], [N, P]
            if self.aggregation == "sum":
                sf, se, count = f.sum(1).sum(0, keepdim=True), e.sum(1).sum(0, keepdim=True), torch.full((1,), len(e))
            else:
                width = int(lengths.max())
                sf, se, count = torch.zeros(width, f.shape[-1]), torch.zeros(width), torch.zeros(width)
                for i in range(len(e)):
                    length = int(lengths[i])
                    sf[:length] += f[i, :length].flip(0)
                    se[:length] += e[i, :length].flip(0)
                    count[:length] += 1
            if site in self.sums:
                old_f, old_e, old_c = self.sums[site][0], self.sums[site][1], self.counts[site]
                q = max(len(old_c), len(count))
                pad = lambda x, n: torch.cat([x, x.new_zeros((n - len(x), *x.shape[1:]))])  # noqa: E731
                sf, se = pad(old_f, q) + pad(sf, q), pad(old_e, q) + pad(se, q)
                count = pad(old_c, q) + pad(count, q)
            self.sums[site], self.counts[site] = (sf, se), count

    def result(self) -> NodeEffects:
        features = {s: f / self.counts[s].clamp_min(1)[:, None] for s, (f, _) in self.sums.items()}
        errors = {s: e / self.counts[s].clamp_min(1) for s, (_, e) in self.sums.items()}
        return NodeEffects(self.aggregation, features, errors)


def keep_masks(
    nodes: NodeEffects, threshold: float, data, drop_errors: bool = False, chosen: dict | None = None
) -> dict:
    """Per-prompt keep masks (lib.features.ablate) of the circuit of nodes with |effect| >= threshold (or of
    `chosen`: {site: (feature mask [Q, d_sae], error mask [Q])}), for data's prompts."""
    n, p = data.clean.shape
    out = {}
    for site in nodes.features:
        if chosen is not None:
            f_keep, e_keep = chosen[site]
        else:
            f_keep, e_keep = nodes.features[site].abs() >= threshold, nodes.errors[site].abs() >= threshold
        if drop_errors:
            e_keep = torch.zeros_like(e_keep)
        if nodes.aggregation == "sum":
            out[site] = {
                "features": f_keep[0][None, None].expand(n, p, -1).clone(),
                "error": e_keep[0].expand(n, p).clone(),
            }
        else:
            features = torch.zeros(n, p, f_keep.shape[-1], dtype=torch.bool)
            error = torch.zeros(n, p, dtype=torch.bool)
            for i in range(n):
                length = int(data.lengths[i])
                q = min(length, f_keep.shape[0])
                features[i, length - q : length] = f_keep[:q].flip(0)
                error[i, length - q : length] = e_keep[:q].flip(0)
            out[site] = {"features": features, "error": error}
    return out


def random_choice(nodes: NodeEffects, size: int, rng: np.random.Generator) -> dict:
    """size nodes drawn uniformly among all nodes (features and errors), as {site: (feature mask, error mask)}."""
    shapes = [(s, nodes.features[s].shape, nodes.errors[s].shape) for s in nodes.features]
    total = sum(int(np.prod(f)) + int(np.prod(e)) for _, f, e in shapes)
    picked = np.zeros(total, dtype=bool)
    picked[rng.choice(total, size=min(size, total), replace=False)] = True
    out, start = {}, 0
    for s, f_shape, e_shape in shapes:
        nf, ne = int(np.prod(f_shape)), int(np.prod(e_shape))
        out[s] = (
            torch.from_numpy(picked[start : start + nf].reshape(f_shape)),
            torch.from_numpy(picked[start + nf : start + nf + ne].reshape(e_shape)),
        )
        start += nf + ne
    return out


def thresholds_for_sizes(nodes: NodeEffects, sizes: list[int]) -> list[float]:
    """The node threshold that keeps (about) each size of nodes: the size-th largest |effect|."""
    ranked = np.sort(nodes.magnitudes())[::-1]
    return [float(ranked[min(k, len(ranked)) - 1]) for k in sizes]
