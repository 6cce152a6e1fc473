#!/usr/bin/env bash
# Installs and starts the servers the tests use. Idempotent: safe to run again on a machine
# where they are already installed and running.
set -euo pipefail
need=()
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v mariadb-admin >/dev/null 2>&1 || need+=(mariadb-server)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# buildah: the test that builds eventflow's OCI image without a Docker engine.
command -v buildah >/dev/null 2>&1 || need+=(buildah)
# openssl: a TLS receiver with a self-signed certificate (what a webhook logs about it).
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# faketime: the tests that run with the clock moved (no test may depend on the date it runs).
command -v faketime >/dev/null 2>&1 || need+=(faketime)
# The servers of the alertmanager and nats sinks' tests (each test starts its own instance).
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
[ -x /usr/sbin/nats-server ] || need+=(nats-server)
# python3 with venv: the otlp sink's tests decode what it sends with the official OpenTelemetry
# Python packages (installed below into a virtual environment of their own).
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PGVER=$(ls /etc/postgresql | sort -V | tail -1)
pg_ctlcluster "$PGVER" main status >/dev/null 2>&1 || pg_ctlcluster "$PGVER" main start
for _ in $(seq 1 100); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.1; done
runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 <<'SQL'
SELECT 'CREATE ROLE eventflow LOGIN PASSWORD ''eventflow''' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname='eventflow')\gexec
SELECT 'CREATE DATABASE eventflow OWNER eventflow' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname='eventflow')\gexec
SQL

mariadb-admin -s ping >/dev/null 2>&1 || service mariadb start >/dev/null
for _ in $(seq 1 100); do mariadb-admin -s ping >/dev/null 2>&1 && break; sleep 0.1; done
mariadb -e "CREATE DATABASE IF NOT EXISTS eventflow; CREATE USER IF NOT EXISTS 'eventflow'@'localhost' IDENTIFIED BY 'eventflow'; CREATE USER IF NOT EXISTS 'eventflow'@'%' IDENTIFIED BY 'eventflow'; GRANT ALL ON eventflow.* TO 'eventflow'@'localhost'; GRANT ALL ON eventflow.* TO 'eventflow'@'%';"
# The Python receivers' packages (versions the tests were written against): the OTLP receiver
# (opentelemetry-proto, grpcio, grpcio-status) and the chat services' (jsonschema, for the
# Adaptive Card schema).
OTLP_VENV=/opt/eventflow-otlp
if ! "$OTLP_VENV/bin/python" -c "import grpc, grpc_status, opentelemetry.proto, jsonschema" >/dev/null 2>&1; then
  python3 -m venv "$OTLP_VENV"
  "$OTLP_VENV/bin/pip" install -q --disable-pip-version-check \
    opentelemetry-proto==1.45.2 grpcio==1.85.4 grpcio-status==1.85.3 jsonschema==4.26.0
fi

echo "postgres $PGVER and mariadb are up; promtool: $(command -v promtool)"
