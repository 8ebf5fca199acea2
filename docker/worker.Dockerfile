# syntax=docker/dockerfile:1
# The GPU worker image: scrapscan-worker with ONNX Runtime (CUDA) and TensorRT.
# CUDA 12 runtime with cuDNN 9, as onnxruntime-gpu 1.2x and tensorrt 10 need.
# docker build -f docker/worker.Dockerfile -t scrapscan-worker .
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS base
# the distribution's python of this pinned base image; its versions move with the tag
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libgomp1 \
    && rm -rf /var/lib/apt/lists/*

FROM base AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common common
COPY service service
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-compile ".[serve,gpu]"

FROM base
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin scrapscan
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SCRAPSCAN_STORE=redis \
    SCRAPSCAN_BUNDLE=/models/current \
    SCRAPSCAN_DEVICE=cuda
USER 10001
EXPOSE 8001
# liveness only: an engine that is still loading is not unhealthy (readiness says so)
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/healthz', timeout=2)"]
ENTRYPOINT ["scrapscan-worker", "--host", "0.0.0.0", "--port", "8001"]
