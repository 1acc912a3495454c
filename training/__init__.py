"""Training: the loop, evaluation, Grad-CAM baseline, reports and the demo."""
