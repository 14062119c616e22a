#!/usr/bin/env bash
# Make a local PostgreSQL reachable on /var/run/postgresql for the test suite, with a
# superuser role for the current user. Idempotent; starts only the Debian cluster.
set -euo pipefail
socket_dir=${DICOMWEB_TEST_PG:-/var/run/postgresql}
me=$(id -un)

if pg_isready -q -h "$socket_dir" 2>/dev/null; then
  :
elif command -v pg_ctlcluster >/dev/null 2>&1; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)
  if [ -z "$version" ]; then
    echo "ensure-postgres: no PostgreSQL cluster configured" >&2; exit 1
  fi
  pg_ctlcluster "$version" main start
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  version=$(ls /etc/postgresql | sort -n | tail -1)
  pg_ctlcluster "$version" main start
else
  echo "ensure-postgres: PostgreSQL is not installed; install it or set DICOMWEB_TEST_PG" >&2
  exit 1
fi

for _ in $(seq 1 50); do
  pg_isready -q -h "$socket_dir" && break
  sleep 0.2
done
pg_isready -h "$socket_dir"

if [ "$me" != postgres ]; then
  exists=$(su postgres -c "psql -h '$socket_dir' -tAc \"SELECT 1 FROM pg_roles WHERE rolname='$me'\"" 2>/dev/null || true)
  if [ "$exists" != 1 ]; then
    su postgres -c "createuser -h '$socket_dir' -s '$me'"
  fi
fi
