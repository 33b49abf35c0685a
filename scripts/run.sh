#!/usr/bin/env bash
# Runs chat-server on the embedded default: no Redis or MongoDB needed, state in
# ./data, the web client on http://localhost:8080. Environment variables from
# README.md (CHAT_*) are passed through.
set -euo pipefail
cd "$(dirname "$0")/.."

# The web client is built when missing or older than its sources (needs Node
# 20+ and npm; without them the server still runs, API only).
if command -v npm >/dev/null; then
  if [ ! -f web/dist/index.html ] || [ -n "$(find web/src web/index.html web/package-lock.json -newer web/dist/index.html -print -quit)" ]; then
    echo "==> building the web client" >&2
    (cd web && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent)
  fi
else
  echo "npm not found: serving the API without the web client (install Node.js 20+ for it)" >&2
fi

export CHAT_LOG_FORMAT="${CHAT_LOG_FORMAT:-pretty}"
export CHAT_WEB_DIR="${CHAT_WEB_DIR:-$PWD/web/dist}"
exec cargo run --release --locked -p chat-server
