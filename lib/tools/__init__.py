"""Programs beside the library: the toy-model and dictionary trainers, the task exporter (`python -m lib.tools.<name>`)."""
