# A stand-in for prom/prometheus where Docker Hub cannot be reached: Debian's own `prometheus` package on a
# Debian base (deploy/docker/debootstrap-base.sh builds one), run the way the official image runs it (entrypoint
# the binary, data in /prometheus owned by nobody), so docker-compose.yml uses it unchanged:
#     docker build --network host --build-arg BASE_IMAGE=lpu-serve-base:bookworm \
#         -t lpu-serve-prometheus:debian -f deploy/docker/prometheus-debian.Dockerfile deploy/docker
#     PROMETHEUS_IMAGE=lpu-serve-prometheus:debian make demo
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus \
    && chown nobody:nogroup /prometheus
USER nobody
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
