# Local stand-ins for the public images docker-compose.yml names, for machines without an
# image registry (deploy/base-images.sh builds them FROM a debootstrapped Debian bookworm):
#   --target python   → shears-local/python:3.11-slim  (Debian's Python 3.11 in a venv on PATH)
#   --target redis    → shears-local/redis:7           (Debian's redis-server, WORKDIR /data)
#   --target postgres → shears-local/postgres:15       (Debian's PostgreSQL; POSTGRES_* env as upstream)
#   --target moto     → shears-local/moto:5            (moto's S3 server on :9000, in place of MinIO)
ARG DEBIAN_IMAGE=shears-local/debian:bookworm

FROM ${DEBIAN_IMAGE} AS python
ENV LANG=C.UTF-8 PATH=/usr/local/python/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* && python3 -m venv /usr/local/python && python --version
CMD ["python3"]

FROM ${DEBIAN_IMAGE} AS redis
RUN apt-get update && apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
# As the official image: protected mode off (the container network is the boundary), also
# when compose replaces the command.
ENTRYPOINT ["sh", "-c", "exec \"$@\" --protected-mode no", "redis"]
CMD ["redis-server"]

FROM ${DEBIAN_IMAGE} AS postgres
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /var/lib/postgresql/data /run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/
USER postgres
EXPOSE 5432
ENTRYPOINT ["postgres-entrypoint.sh"]

FROM python AS moto
ARG MOTO_VERSION=5.2.5
RUN --mount=type=secret,id=extra_ca set -e; bundle=/etc/ssl/certs/ca-certificates.crt; \
    if [ -s /run/secrets/extra_ca ]; then cat "$bundle" /run/secrets/extra_ca > /tmp/ca.pem; export PIP_CERT=/tmp/ca.pem; fi; \
    pip install --no-cache-dir "moto[server]==${MOTO_VERSION}"; rm -f /tmp/ca.pem
EXPOSE 9000
CMD ["moto_server", "-H", "0.0.0.0", "-p", "9000"]
