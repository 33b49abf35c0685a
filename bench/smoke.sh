#!/usr/bin/env bash
# The benchmark's smoke run, part of scripts/test.sh: one chat-server (debug
# build, embedded store), 1,000 connections in 50 rooms for 10 s at 100
# messages/s. It asserts completeness (no errors, every message delivered to
# every member of its room), never timings: those belong to bench/run.py.
set -euo pipefail
cd "$(dirname "$0")/.."

server=target/debug/chat-server
bench=target/debug/chat-bench
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
data="$(mktemp -d)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

CHAT_LISTEN_ADDR="127.0.0.1:$port" CHAT_DATA_DIR="$data" CHAT_WEB_DIR="$data/no-web" \
CHAT_RATE_LIMIT_PER_SEC=100000 CHAT_RATE_LIMIT_BURST=100000 RUST_LOG=warn \
CHAT_SIGNUPS_PER_ADDRESS_PER_HOUR=1000000 CHAT_MAX_CONNECTIONS_PER_ADDRESS=1000000 \
CHAT_MAX_CONNECTIONS_PER_USER=100000 \
  "$server" 2>"$data/server.log" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT

python3 - "$port" <<'PY'
import sys, time, urllib.request
deadline = time.time() + 30
while time.time() < deadline:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1)
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("chat-server did not become ready")
PY

if ! "$bench" --url "http://127.0.0.1:$port" --server-pid "$pid" \
    --connections 1000 --rooms 50 --users 20 --rate 100 --duration 10 --require-complete; then
  echo "smoke run failed; server log:" >&2
  tail -50 "$data/server.log" >&2
  exit 1
fi
