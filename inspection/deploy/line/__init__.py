"""The line runner: frame sources, station config, the runner, its failure log writer and its outputs."""
