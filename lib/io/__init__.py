"""I/O: the command line, run directories, progress, signals, plots, headline metrics."""
