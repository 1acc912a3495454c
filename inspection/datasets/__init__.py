"""Dataset tools: the synthetic generator, converters for public sets, split files, a scripted reviewer."""
