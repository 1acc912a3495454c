"""Training (PyTorch): the loop, evaluation with the Grad-CAM baseline, reports, export, gate, retrain, demo."""
