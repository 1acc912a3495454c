"""Dataset tools: the synthetic generator (imported as inspection_datasets)."""
