"""Checks of option values, shared by every script: each refuses a bad value in one line (UserError)."""

from __future__ import annotations

import numpy as np

from lib.core.errors import UserError

EXPORTS = ("", "eap-ig")


def typed(spec: str) -> str:
    """A variadic option's value as the user typed it (its values joined by spaces)."""
    return spec.replace("\n", " ")


def parse_floats(spec: str, what: str) -> list[float]:
    """Space- or comma-separated finite numbers (nan and inf are refused: every comparison with NaN is false)."""
    try:
        values = [float(s) for s in spec.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"{what} must be numbers, got {typed(spec)!r}") from None
    check_finite(what, *values)
    return values


def parse_ints(spec: str, what: str) -> list[int]:
    """Space- or comma-separated integers."""
    try:
        return [int(s) for s in spec.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"{what} must be whole numbers, got {typed(spec)!r}") from None


def check_at_least(minimum: int, *options: tuple[str, int]) -> None:
    """Each (option name, value) pair: the value must be at least minimum."""
    for what, value in options:
        if value < minimum:
            raise UserError(f"{what} must be at least {minimum} (got {value})")


def check_between(low: int, high: int, *options: tuple[str, int]) -> None:
    """Each (option name, value): low <= value <= high. Upper bounds catch a typed extra digit before it fills
    memory or runs for days; each is far above any published use."""
    for what, value in options:
        if not low <= value <= high:
            raise UserError(f"{what} must be between {low:,} and {high:,} (got {value:,})")


def check_edge_counts(graph, *options: tuple[str, int]) -> None:
    """Each (option name, number of edges): at most the model's edges (checked once the model is loaded, before
    any work; the same rule in every script)."""
    for what, value in options:
        if value > graph.n_edges:
            raise UserError(f"{what} {value:,} is more than the model's {graph.n_edges:,} edges")


def check_rows_per_pass(value: int | None) -> None:
    if value is not None:
        check_at_least(1, ("--rows-per-pass", value))


def check_export(export: str) -> None:
    if export not in EXPORTS:
        raise UserError(f"unknown --export {export!r}; use eap-ig")


def check_finite(what: str, *values: float | None) -> None:
    for v in values:
        if v is not None and not np.isfinite(v):
            raise UserError(f"{what} must be a finite number, got {v}")
