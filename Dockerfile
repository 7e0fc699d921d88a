# lpu-serve: `docker build -t lpu-serve .` then `docker run -p 8000:8000 lpu-serve` serves the embedded demo
# model (no download) on http://127.0.0.1:8000. The compose stack (docker-compose.yml) runs it with
# Prometheus, Grafana and a traffic generator.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin lpu
WORKDIR /app

# Dependencies in their own layer, keyed on pyproject.toml alone: editing the code does not reinstall them.
# The `demo` extra (httpx) is for the traffic generator the compose stack runs from this same image.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['demo']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY lpu_runtime/ lpu_runtime/
COPY server/ server/
RUN pip install --no-deps . && rm -rf build *.egg-info
COPY deploy/traffic/ deploy/traffic/

USER lpu
ENV LPU_HOST=0.0.0.0 \
    LPU_PORT=8000
EXPOSE 8000

# The engine is built (weights placed into every chip's SRAM) before /health says ok: give it time.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('LPU_PORT', '8000')}/health\", timeout=4)"

CMD ["lpu", "serve"]
