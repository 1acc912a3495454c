# GPU line-side runner: TensorRT and onnxruntime-gpu on an NVIDIA GPU, still without torch.
#   docker build -f docker/gpu.Dockerfile -t inspection-runner-gpu .
#   docker run --gpus all -v ./station.yaml:/etc/inspection/station.yaml:ro -v models:/models:ro \
#              -v failures:/var/lib/inspection/failures -p 9100:9100 inspection-runner-gpu
# Needs the NVIDIA Container Toolkit on the host. TensorRT engines are built on first use for the GPU in
# the container and cached in the package's engines/ folder: mount /models writable, or accept a build
# (minutes) at each start. The CUDA major version must match the onnxruntime-gpu wheel (CUDA 13 here).

ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE} AS base
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*

FROM base AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/inspection
WORKDIR /src
COPY pyproject.toml README.md ./
COPY docker/requirements.py docker/
ARG EXTRAS="gpu tensorrt postgres"
# TensorRT's libraries are published on NVIDIA's package index
RUN python3 docker/requirements.py $EXTRAS > requirements.txt \
    && /opt/inspection/bin/pip install --extra-index-url https://pypi.nvidia.com -r requirements.txt
COPY inspection inspection
COPY docker/trim-venv.sh /usr/local/bin/
# onnxruntime-gpu loads its CUDA and TensorRT providers through its own libraries: keep them all
RUN /opt/inspection/bin/pip install --no-deps . && KEEP_ORT_LIBS=1 trim-venv.sh /opt/inspection

FROM base
LABEL org.opencontainers.image.title="inspection-runner-gpu" \
      org.opencontainers.image.description="Line-side defect inspection runner on TensorRT / onnxruntime-gpu"
RUN groupadd --system --gid 10001 inspection \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/inspection --create-home inspection \
    && mkdir -p /etc/inspection /models /var/lib/inspection/failures \
    && chown 10001:10001 /models /var/lib/inspection/failures
COPY --from=build /opt/inspection /opt/inspection
COPY configs/station.yaml /etc/inspection/station.yaml
ENV PATH=/opt/inspection/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /var/lib/inspection
VOLUME ["/etc/inspection", "/models", "/var/lib/inspection/failures"]
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request as u; u.urlopen('http://127.0.0.1:9100/health', timeout=4); sys.exit(0)"]
ENTRYPOINT ["inspection"]
# HTTP on all interfaces at 9100 whatever the station file says: the health check depends on it
CMD ["run", "--station", "/etc/inspection/station.yaml", "--set", "http.host=0.0.0.0", "--set", "http.port=9100"]
