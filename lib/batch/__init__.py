"""Grid reruns: grid files, running cells, aggregation."""
