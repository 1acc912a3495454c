# Training image (CPU). Line-side (torch-free) and GPU images come with the deployment work.
#   docker build -t inspection-train .
#   docker run --rm -v $PWD/data:/app/data -v $PWD/runs:/app/runs inspection-train demo
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 inspector
WORKDIR /app
# the CPU build of torch keeps the image small; the package needs nothing GPU-specific to train on CPU
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY inspection inspection
COPY training training
COPY deploy deploy
COPY datasets datasets
COPY configs configs
RUN pip install --no-cache-dir '.[export]'
USER inspector
ENTRYPOINT ["inspection"]
CMD ["--help"]
