"""Defect inspection with attention-branch CNNs. Imports nothing heavy, so line-side helpers stay torch-free."""
