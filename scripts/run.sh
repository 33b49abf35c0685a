#!/usr/bin/env bash
# Runs chat-server on the embedded default: no Redis or MongoDB needed, state in
# ./data, listening on http://localhost:8080. Environment variables from
# README.md (CHAT_*) are passed through.
set -euo pipefail
cd "$(dirname "$0")/.."
export CHAT_LOG_FORMAT="${CHAT_LOG_FORMAT:-pretty}"
exec cargo run --release --locked -p chat-server
