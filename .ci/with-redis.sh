#!/usr/bin/env bash
# Run a command with YOI_TEST_REDIS_URL pointing at a throwaway Redis on 127.0.0.1 (a free port).
# Installs Debian's redis-server when it is missing; stops the server (by its pid file) afterwards.
set -euo pipefail

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server >/dev/null
fi

rundir=$(mktemp -d /tmp/yoi-redis.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
cleanup() {
  if [ -s "$rundir/redis.pid" ]; then
    pid=$(cat "$rundir/redis.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$rundir"
}
trap cleanup EXIT

redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$rundir/redis.pid" --dir "$rundir" --logfile "$rundir/redis.log"

# Ready when it answers PING (bounded wait).
python3 - "$port" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 30
while True:
    try:
        with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("redis-server did not answer PING within 30 s")
    time.sleep(0.1)
PY
echo "redis on 127.0.0.1:$port"

export YOI_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
"$@"
