#!/usr/bin/env bash
# PostgreSQL for the tests on this machine: install it from Debian's packages when absent, let user
# postgres in without a password on 127.0.0.1 only, start it, and create database `test`.
# Needs root (apt-get, the cluster's files). `.ci/run` and `make postgres` call it.
set -euo pipefail

if ! ls /etc/postgresql/*/main/pg_hba.conf >/dev/null 2>&1; then
  echo "postgres: installing PostgreSQL from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /etc/postgresql | sort -V | tail -1)
hba=/etc/postgresql/$version/main/pg_hba.conf
if ! grep -q "yibao-tests" "$hba"; then
  sed -i '1i host all postgres 127.0.0.1/32 trust  # yibao-tests: loopback only' "$hba"
fi
if pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$version" main reload
else
  echo "postgres: starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi
for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
pg_isready -q -h 127.0.0.1 -p 5432 || { echo "postgres: not accepting connections on 127.0.0.1:5432" >&2; exit 1; }
if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE test"
fi
echo "postgres: PostgreSQL $version on 127.0.0.1:5432, database test"
