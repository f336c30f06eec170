"""Core: models, the graph, interventions, metrics, canonical circuits, the toy model."""
