"""Two models on the same prompts (11_compare_models.py): behaviour, circuits, graphs, features, maps."""
