# CPU images of recsys-compress, built with the same commands as `make install` / `make install-serve`.
#   docker build --target train -t recsys:train .   # full stack: data, training (Ray, MLflow), serving
#   docker build --target serve -t recsys:serve .   # the lookup service only (no Ray)
#   docker run -p 8000:8000 -v $PWD/artifact:/models/current:ro recsys:serve
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

FROM ${PYTHON_IMAGE} AS source
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# gcc and the C library headers build recsys.serving.idpath (serving/idpath.c), recsys.serving.httpfast, recsys.data.fastcat
# and recsys.data.fastparse (recsys/data/) at install time; the runtime stages copy the built venv and /app only.
# libc6-dev follows the image's libc6 (unpinned).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-4.1 gcc=4:12.2.0-3 libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY Makefile pyproject.toml README.md ./
COPY requirements/ requirements/
COPY scripts/ scripts/
COPY recsys/ recsys/
COPY training/ training/
COPY serving/ serving/
COPY configs/ configs/

FROM source AS train-build
ARG TORCH_INDEX
RUN make install VENV=/opt/venv PYTHON=python3.11 TORCH_INDEX=${TORCH_INDEX}

FROM source AS serve-build
ARG TORCH_INDEX
RUN make install-serve VENV=/opt/venv PYTHON=python3.11 TORCH_INDEX=${TORCH_INDEX}

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
RUN useradd --create-home --uid 10001 recsys
WORKDIR /home/recsys

FROM runtime AS train
COPY --from=train-build /opt/venv /opt/venv
COPY --from=train-build /app /app
USER 10001
ENTRYPOINT ["recsys"]
CMD ["--help"]

FROM runtime AS serve
COPY --from=serve-build /opt/venv /opt/venv
COPY --from=serve-build /app /app
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["recsys", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--model", "/models/current"]
