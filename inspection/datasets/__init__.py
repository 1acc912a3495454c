"""Dataset tools: the synthetic generator, converters of public sets into the folder layout, their split files."""
