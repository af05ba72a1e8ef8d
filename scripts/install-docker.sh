#!/usr/bin/env bash
# What `make test-compose` needs on a Debian machine without Docker, from Debian's packages:
# the engine (docker.io: dockerd and a client), docker-compose 1.29 (unless a `docker compose`
# plugin answers) and mmdebstrap (the local base image). tests/compose starts a private dockerd
# when no engine answers.
set -euo pipefail
need=()
command -v dockerd >/dev/null || need+=(docker.io)
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null \
  || need+=(docker-compose)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "make test-compose needs ${need[*]} (apt-get install, as root)" >&2
  exit 1
fi
echo "==> installing ${need[*]} (Debian's packages)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
