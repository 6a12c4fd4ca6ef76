#!/usr/bin/env bash
# Run a command with DATABASE_URL pointing at a throwaway PostgreSQL cluster on 127.0.0.1 (a free port).
# Installs Debian's postgresql when no server binaries are present.
set -euo pipefail

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
pgbin=$(find_bin)
if [ -z "$pgbin" ] || [ ! -x "$pgbin/postgres" ]; then
  echo "installing postgresql (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
  pgbin=$(find_bin)
fi

as_pg() {
  if [ "$(id -u)" = "0" ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pgdata=$(mktemp -d /tmp/yoi-pg.XXXXXX)
[ "$(id -u)" = "0" ] && chown postgres "$pgdata"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
cleanup() {
  as_pg "$pgbin/pg_ctl" -D "$pgdata" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$pgdata"
}
trap cleanup EXIT

as_pg "$pgbin/initdb" -D "$pgdata" -A trust -U postgres >/dev/null
as_pg "$pgbin/pg_ctl" -D "$pgdata" -w -t 60 -l "$pgdata/server.log" \
  -o "-p $port -k $pgdata -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
echo "postgresql on 127.0.0.1:$port"

export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
"$@"
