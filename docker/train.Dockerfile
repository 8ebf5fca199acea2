# syntax=docker/dockerfile:1
# The training image: scrapscan-train / -eval / -export on a GPU host (torch brings its
# own CUDA libraries). Mount the data, the run folder and CLIP weights (air-gapped plants).
# docker build -f docker/train.Dockerfile -t scrapscan-train .
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common common
COPY service service
COPY training training
COPY model_export model_export
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-compile ".[export]"

FROM python:3.11.11-slim-bookworm
RUN useradd --system --uid 10001 --create-home --home-dir /home/scrapscan --shell /usr/sbin/nologin scrapscan
COPY --from=build /opt/venv /opt/venv
COPY configs /opt/scrapscan/configs
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 10001
WORKDIR /home/scrapscan
HEALTHCHECK NONE
ENTRYPOINT ["scrapscan-train"]
CMD ["--help"]
