#!/usr/bin/env bash
# Builds a minimal Debian bookworm image with Python 3.11 and pip from Debian's packages
# (mmdebstrap, then `docker import`): the Dockerfile's PYTHON_IMAGE where no image registry is
# reachable (`FROM python:…` cannot be pulled). It trusts the CA certificates this host trusts
# (/usr/local/share/ca-certificates), so pip inside a build works behind the same TLS proxy.
#
#   scripts/docker-base.sh tandem-base:bookworm
#   docker build --network host --build-arg PYTHON_IMAGE=tandem-base:bookworm -t tandem:0.1.0 .
#
# Needs root, mmdebstrap (apt-get install mmdebstrap) and a Docker engine (DOCKER_HOST).
set -euo pipefail
image="${1:?usage: scripts/docker-base.sh IMAGE[:TAG]}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
tarball="$(mktemp --suffix=.tar)"
trap 'rm -f "$tarball"' EXIT
# python:3.11-slim's layout: `python` and `pip` on PATH, pip allowed to install system-wide.
# No documentation, man pages or translations (about 40 MB).
mmdebstrap --variant=minbase --quiet \
  --include=python3,python3-pip,python-is-python3,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null || true' \
  --customize-hook='chroot "$1" update-ca-certificates' \
  --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
  bookworm "$tarball" "$mirror"
docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
  --message "debian bookworm + python3 (scripts/docker-base.sh)" "$tarball" "$image" >/dev/null
echo "$image"
