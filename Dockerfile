# The image most users start with: the line-side runner (`inspection run` on onnxruntime + OpenCV + numpy) and
# the review station (`inspection review`). No torch, no compiler, no pip at run time. GPU and training images:
# docker/gpu.Dockerfile, docker/train.Dockerfile.
#   docker build -t inspection-runner .
#   docker run -v ./station.yaml:/etc/inspection/station.yaml:ro -v models:/models:ro \
#              -v failures:/var/lib/inspection/failures -p 9100:9100 inspection-runner
# Health check and Prometheus: http://<container>:9100/health and /metrics.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/inspection
WORKDIR /src
COPY pyproject.toml README.md ./
COPY docker/requirements.py docker/
# dependencies first, read from pyproject.toml (core + [line] + [postgres] + [review] + [plc]): rebuilt only when it changes
ARG EXTRAS="line postgres review plc"
# more extras on top, e.g. OpenVINO for Intel line PCs: docker build --build-arg ADD_EXTRAS=openvino .
ARG ADD_EXTRAS=""
RUN python docker/requirements.py $EXTRAS $ADD_EXTRAS > requirements.txt \
    && /opt/inspection/bin/pip install -r requirements.txt
COPY inspection inspection
# the package itself (no dependency resolution: the runtime set above is the whole of it), then the trim
COPY docker/trim-venv.sh /usr/local/bin/
RUN /opt/inspection/bin/pip install --no-deps . && trim-venv.sh /opt/inspection

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="inspection-runner" \
      org.opencontainers.image.description="Line-side defect inspection runner and review station (no torch)"
RUN groupadd --system --gid 10001 inspection \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/inspection --create-home inspection \
    && mkdir -p /etc/inspection /models /var/lib/inspection/failures /var/lib/inspection/outbox \
                /var/lib/inspection/accounts \
    && chown 10001:10001 /models /var/lib/inspection/failures /var/lib/inspection/outbox \
                         /var/lib/inspection/accounts
COPY --from=build /opt/inspection /opt/inspection
COPY configs/station.yaml /etc/inspection/station.yaml
ENV PATH=/opt/inspection/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/inspection
# config (station.yaml), model registry (read-only: the training server promotes), failure log, outbox
VOLUME ["/etc/inspection", "/models", "/var/lib/inspection/failures", "/var/lib/inspection/outbox"]
# /health + /metrics; the PLC servers when configured (plc.opcua.port, plc.modbus.port: docs/plc.md)
EXPOSE 9100 4840 5020
# healthy = the runner's /health says ok (model loaded, camera connected, failure log writable);
# 503 while degraded (camera lost, disk full, database down) marks the container unhealthy
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; u.urlopen('http://127.0.0.1:9100/health', timeout=4); sys.exit(0)"]
ENTRYPOINT ["inspection"]
# HTTP on all interfaces at 9100 whatever the station file says: the health check depends on it
CMD ["run", "--station", "/etc/inspection/station.yaml", "--set", "http.host=0.0.0.0", "--set", "http.port=9100"]
