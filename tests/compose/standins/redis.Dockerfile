# Stand-in for redis:7.4.2-alpine where no image registry is reachable (tests/compose only):
# Debian's redis-server on the locally built base (scripts/docker-base.sh).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
USER redis
CMD ["redis-server"]
