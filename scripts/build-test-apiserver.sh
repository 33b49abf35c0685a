#!/usr/bin/env bash
# Builds the Kubernetes API server and etcd that the operator's real-server
# tests start (operator/tests/apiserver), with the Go toolchain's ordinary
# commands from the Go module proxy, into .cache/kube/bin. The versions are
# those of operator/tests/apiserver/go.mod; a second run with the same go.mod
# and go.sum only compares a stamp. The first build takes about 5 minutes on
# two cores and ~1 GB of module and build caches (in Go's usual places).
set -euo pipefail
cd "$(dirname "$0")/.."
module=operator/tests/apiserver
out="$PWD/.cache/kube/bin"
stamp="$(cat "$module/go.mod" "$module/go.sum" | sha256sum | cut -d' ' -f1)"
if [ -x "$out/kube-apiserver" ] && [ -x "$out/etcd" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
if ! command -v go >/dev/null; then
  echo "the real-server tests need Go 1.26 or newer to build kube-apiserver and etcd: https://go.dev/doc/install" >&2
  exit 1
fi
mkdir -p "$out"
cd "$module"
kubernetes="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
IFS=. read -r major minor _ <<<"${kubernetes#v}"
echo "building kube-apiserver $kubernetes and etcd $(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3) into .cache/kube/bin"
# The version Kubernetes' own build stamps in, so /version and the API
# server's compatibility checks see a release, not v0.0.0-master.
version=k8s.io/component-base/version
go build -buildvcs=false -trimpath -o "$out/kube-apiserver" \
  -ldflags "-s -w -X $version.gitVersion=$kubernetes -X $version.gitMajor=$major -X $version.gitMinor=$minor" \
  k8s.io/kubernetes/cmd/kube-apiserver
go build -buildvcs=false -trimpath -o "$out/etcd" -ldflags "-s -w" go.etcd.io/etcd/server/v3
echo "$stamp" > "$out/stamp"
