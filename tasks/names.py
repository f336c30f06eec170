"""The built-in tasks' names, importable without torch or pandas (the CLI checks --tasks before anything loads)."""

TASK_NAMES = ("ioi", "sva", "docstring", "greater-than")
