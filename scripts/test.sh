#!/usr/bin/env bash
# Runs every test of the project, installing what the tests need when missing:
# redis-server and chromium (apt), into .venv from PyPI the MongoDB-wire-
# compatible SecantusDB, kubernetes-validate and Helm's library
# (helm-python-sdk), the web client's packages (npm ci), and kube-apiserver
# and etcd built with Go from the module proxy (.cache/kube).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; exit 1
  fi
}

apt_install() {
  say "installing $* with apt"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v redis-server >/dev/null || apt_install redis-server
# `haproxy -c` checks the Compose deployment's load balancer configuration.
command -v haproxy >/dev/null || apt_install haproxy

# The venv is (re)filled whenever scripts/requirements-test.txt changes.
wanted="$(sha256sum scripts/requirements-test.txt | cut -d' ' -f1)"
if [ "$(cat .venv/requirements.sha256 2>/dev/null)" != "$wanted" ]; then
  say "installing the test requirements into .venv"
  [ -x .venv/bin/pip ] || python3 -m venv .venv 2>/dev/null || { apt_install python3-venv; python3 -m venv .venv; }
  .venv/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
  echo "$wanted" > .venv/requirements.sha256
fi
export CHAT_TEST_PYTHON="$PWD/.venv/bin/python"

say "Kubernetes API server and etcd for the operator's real-server tests"
# Built once from the Go module proxy into .cache/kube/bin (about 5 minutes);
# later runs only compare a stamp.
scripts/build-kube.sh

say "formatting"
cargo fmt --all -- --check

say "lints"
# The server's layers: shells over the engine over the ports; an import
# cycle between its modules fails here (server/src/lib.rs has the map).
python3 scripts/check_layers.py
cargo clippy --workspace --all-targets --locked -- -D warnings
# The real node's tests (test = false: run only with that node up).
cargo clippy --workspace --locked --test node -- -D warnings
# The server's cluster and fault suites (test = false: run below, by name).
cargo clippy --locked -p chat-server --test cluster -- -D warnings

say "tests"
# One build of every target with the feature set `cargo test` resolves, so the
# binaries the web and benchmark steps run (target/debug/chat-server and
# chat-bench) come out of it; a later `cargo build -p ...` would resolve other
# features and compile the dependencies again.
cargo build --workspace --all-targets --locked

# The release and CI workflows: actionlint (built with Go from the module
# proxy, pinned; its PyPI wrapper downloads from elsewhere) and, through it,
# ShellCheck on the workflows' scripts; ShellCheck on every other shell
# script too (the Redis pods' start scripts the operator renders among them).
say "shell scripts and workflows: shellcheck, actionlint"
command -v shellcheck >/dev/null || apt_install shellcheck
shellcheck scripts/*.sh bench/*.sh operator/src/desired/*.sh
# The replica-set script the MongoDB init Job runs in mongosh (JavaScript):
# no MongoDB here runs replica sets, so at least it must parse.
command -v node >/dev/null || apt_install nodejs npm
node --check operator/src/desired/mongodb-members.js
actionlint_version=v1.7.12
if [ "$(cat .cache/bin/actionlint.version 2>/dev/null)" != "$actionlint_version" ]; then
  GOBIN="$PWD/.cache/bin" go install "github.com/rhysd/actionlint/cmd/actionlint@$actionlint_version"
  echo "$actionlint_version" > .cache/bin/actionlint.version
fi
.cache/bin/actionlint -shellcheck "$(command -v shellcheck)" .github/workflows/*.yml

# After the build: checkov reads what the operator binary renders.
say "packaging: Helm charts, Dockerfiles (hadolint), Compose, kind, Tilt, alerts, dashboard, checkov"
.venv/bin/python scripts/check_packaging.py

cargo test --workspace --locked
say "the server's clusters and faults: pods on one Redis, Sentinel, Redis Cluster, outages"
cargo test --locked -p chat-server --test cluster

say "web client: unit tests, build, end-to-end in headless Chromium"
command -v chromium >/dev/null || apt_install chromium
command -v npm >/dev/null || apt_install nodejs npm
(
  cd web
  npm ci --no-audit --no-fund --loglevel=error
  npm test
  npm run build
  npm run e2e
)

say "a real node: Kubernetes on this machine, the images built here, helm and kubectl as users run them"
# scripts/cluster.sh: etcd, the control plane, containerd, a kubelet,
# kube-proxy and CoreDNS as processes of this machine, pods on a bridge of
# its own; scripts/images.sh: the images from the project's Dockerfiles on
# local bases. Both need root. The cluster is taken down however the tests
# end.
as_root scripts/cluster.sh up
trap 'as_root scripts/cluster.sh down' EXIT
as_root scripts/images.sh test test-2
as_root scripts/cluster.sh import .cache/images/chat-server.tar .cache/images/chat-operator.tar \
  .cache/images/redis.tar .cache/images/mongodb-standin.tar
cargo test --workspace --locked --test node -- --test-threads=1
as_root scripts/cluster.sh down
trap - EXIT

say "Docker Compose for real: up --scale server=3, chat and 1,000 connections through HAProxy, down"
# The images scripts/images.sh built above (in its engine's store), MongoDB
# the stand-in (deploy/compose/standin.yaml); after the node is down, so the
# two never share the machine's network.
as_root .venv/bin/python scripts/compose_test.py

say "benchmark smoke run: 1,000 connections, every message to every member"
bench/smoke.sh

say "soak, two minutes: two servers under churn; memory, descriptors, threads, Redis memory and backlog stay flat"
.venv/bin/python bench/soak.py --minutes 2
