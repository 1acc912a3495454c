"""Training and everything around it (PyTorch, scikit-learn): never imported by the line side.

loader     the torch dataset: decoded, resized, cached images, augmentation, pasted defects, balanced batches
train      the loop (train_one_epoch, resume, checkpoints)
predict    a model's scores and maps on a split (PyTorch; Grad-CAM for the plain CNN)
evaluate   predictions → threshold and box rule calibrated on val, metrics on test (any backend)
metrics    image, box and pixel metrics
report     report.md / report.html with curves and overlays
export     the model package: ONNX FP32 + INT8, parity checked
gate       candidate against production on a golden set
retrain    reviewed parts → fine-tune → gate → promote
scripted_reviewer  a reviewer simulated from masks (the correction benchmarks)
demo       generated data → train → export → line run → review log
"""
