#!/usr/bin/env bash
# Local base images for machines without an image registry (layer-cached; the debootstrap
# runs only when shears-local/debian:bookworm is missing):
#   shears-local/debian:bookworm     debootstrap --variant=minbase | docker import
#   shears-local/python:3.11-slim, shears-local/redis:7, shears-local/postgres:15,
#   shears-local/moto:5              deploy/local-images.Dockerfile, from that Debian
# Needs root, debootstrap, a running dockerd with BuildKit. EXTRA_CA: a PEM file pip trusts
# (a TLS-intercepting proxy), passed as a build secret.
set -euo pipefail
cd "$(dirname "$0")/.."
docker=${DOCKER:-docker}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export DOCKER_BUILDKIT=1

if ! $docker image inspect shears-local/debian:bookworm >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || apt-get install -y -q debootstrap
  root=$(mktemp -d /tmp/shears-debootstrap.XXXXXX)
  trap 'rm -rf "$root" "$root.log"' EXIT
  echo "debootstrap bookworm into $root ..."
  nice -n 10 debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -20 "$root.log"; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | $docker import - shears-local/debian:bookworm >/dev/null
fi
secret=()
[ -n "${EXTRA_CA:-}" ] && secret=(--secret "id=extra_ca,src=$EXTRA_CA")
for target in python:python:3.11-slim redis:redis:7 postgres:postgres:15 moto:moto:5; do
  stage=${target%%:*} image=shears-local/${target#*:}
  nice -n 10 $docker build -q "${secret[@]}" --target "$stage" -t "$image" \
    -f deploy/local-images.Dockerfile deploy >/dev/null  # cached: seconds when nothing changed
done
$docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^shears-local/'
