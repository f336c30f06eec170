"""The verdict of a two-model comparison on one task, from its numbers and the thresholds given (recorded in
run.json): the first of injective, convertible, distributional that the evidence supports, else different."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Thresholds:
    min_correlation: float = 0.9  # a matched feature pair counts as the same feature
    min_matched_share: float = 0.9  # share of A's live features matched at min_correlation
    min_effect_cosine: float = 0.9  # matched features act alike on the task
    min_r2: float = 0.9  # held-out R^2 of the residual map, at every layer
    min_preserved: float = 0.9  # B's normalized task metric under whole-stream patching with W, at every layer
    min_alignment: float = 0.5  # a prompt cluster aligns when its mean same-prompt graph alignment reaches this

    def record(self) -> dict:
        return asdict(self)


def _ok(value, threshold: float) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value >= threshold


def verdict(evidence: dict, t: Thresholds) -> tuple[str, str]:
    """(verdict, the numbers behind it). evidence keys (None where that part did not run): matched_share,
    effect_cosine (the worst over sites), min_r2, min_preserved (over layers), cluster_alignment (each prompt
    cluster's mean same-prompt alignment)."""
    share, effect = evidence.get("matched_share"), evidence.get("effect_cosine")
    r2, preserved, clusters = evidence.get("min_r2"), evidence.get("min_preserved"), evidence.get("cluster_alignment")
    if _ok(share, t.min_matched_share) and _ok(effect, t.min_effect_cosine):
        return "injective", (
            f"{share:.3f} of A's live features matched one-to-one at correlation >= {t.min_correlation}, "
            f"matched effects' cosine >= {effect:.3f}"
        )
    if _ok(r2, t.min_r2) and _ok(preserved, t.min_preserved):
        return (
            "convertible",
            f"held-out R^2 >= {r2:.3f} at every layer, B's behaviour preserved >= {preserved:.3f} under W",
        )
    if (
        clusters
        and any(_ok(c, t.min_alignment) for c in clusters)
        and not all(_ok(c, t.min_alignment) for c in clusters)
    ):
        return "distributional", (
            "prompt clusters' mean graph alignment "
            + ", ".join(f"{c:.3f}" for c in clusters)
            + f" (aligned at >= {t.min_alignment})"
        )
    parts = []
    if share is not None:
        parts.append(f"matched share {share:.3f}")
    if r2 is not None:
        parts.append(f"min R^2 {r2:.3f}")
    if preserved is not None:
        parts.append(f"min preserved {preserved:.3f}")
    if clusters:
        parts.append("cluster alignment " + ", ".join(f"{c:.3f}" for c in clusters))
    return "different", "; ".join(parts) or "no part gave evidence of a correspondence"
