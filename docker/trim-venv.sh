#!/bin/sh
# Remove from a runtime venv what a runner never executes: pip, tests, type stubs, the training code, and the
# parts of onnxruntime that Python inference does not load (the C-API library, model-conversion tools).
# Used by the top-level Dockerfile and benchmarks/runner_image.py (which checks the trimmed venv still runs).
set -eu
venv=$1
"$venv/bin/python" -m pip uninstall -q -y pip setuptools
for site in "$venv"/lib/python3*/site-packages; do
    find "$venv" -depth \( -name __pycache__ -o -name tests -o -name "*.pyi" \) -exec rm -rf {} +
    rm -rf "$site/inspection/training" "$site/inspection/datasets" \
           "$site/onnxruntime/transformers" "$site/onnxruntime/quantization" "$site/onnxruntime/tools"
    if [ "${KEEP_ORT_LIBS:-0}" != 1 ]; then  # CPU build: Python inference never loads the C-API library
        rm -f "$site"/onnxruntime/capi/libonnxruntime.so.*
    fi
done
