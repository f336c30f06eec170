"""Methods: attribution, ACDC, DLA, node patching, causal scrubbing, statistics of circuits."""
