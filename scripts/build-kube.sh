#!/usr/bin/env bash
# Builds the Kubernetes components the tests run, with the Go toolchain's
# ordinary commands from the Go module proxy, into .cache/kube/bin:
# - etcd and kube-apiserver, for the operator's real-API-server tests
#   (operator/tests/apiserver), and the kube-apiserver of the oldest
#   Kubernetes the charts claim (operator/tests/apiserver/oldest);
# - kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kubectl,
#   for the one-node cluster of scripts/cluster.sh;
# - helm (helm.sh/helm/v4) and CoreDNS, as users and that cluster run them;
# - Prometheus, which scrapes the node's chat pods and operator as the
#   charts' ServiceMonitors say, and promtool, which checks and unit-tests
#   the chart's alerts.
# The Kubernetes versions are the tool lines of operator/tests/apiserver/go.mod
# (k8s.io/kubernetes cannot be `go install`ed: it replaces its staging
# modules); helm and CoreDNS are pinned below. A second run with the same
# pins only compares a stamp. A cold build takes 10-12 minutes on two cores
# and ~2 GB of module and build caches (in Go's usual places), ~600 MB of
# binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
module=operator/tests/apiserver
out="$PWD/.cache/kube/bin"
helm_version=v4.3.2
coredns_version=v1.14.7
prometheus_version=v0.316.0
stamp="$(cat "$module/go.mod" "$module/go.sum" "$0" | sha256sum | cut -d' ' -f1)"

need_go() {
  if ! command -v go >/dev/null; then
    echo "the Kubernetes tests need Go 1.26 or newer to build their components: https://go.dev/doc/install" >&2
    exit 1
  fi
}

# The k8s.io/kubernetes version the module in the working directory requires.
kubernetes_version() { go list -m -f '{{.Version}}' k8s.io/kubernetes; }

# The version Kubernetes' own build stamps in, so /version and the
# components' compatibility checks see a release, not v0.0.0-master.
kubernetes_ldflags() {
  local kubernetes major minor version=k8s.io/component-base/version
  kubernetes="$(kubernetes_version)"
  IFS=. read -r major minor _ <<<"${kubernetes#v}"
  echo "-s -w -X $version.gitVersion=$kubernetes -X $version.gitMajor=$major -X $version.gitMinor=$minor"
}

# The kube-apiserver of the oldest Kubernetes the charts claim
# (`kubeVersion`), on which the CRD must install and its CEL rules run:
# its own module and stamp, so adding it rebuilds nothing else.
oldest=operator/tests/apiserver/oldest
oldest_stamp="$(cat "$oldest/go.mod" "$oldest/go.sum" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$out/stamp-oldest" 2>/dev/null)" != "$oldest_stamp" ]; then
  need_go
  mkdir -p "$out"
  (
    cd "$oldest"
    echo "building the kube-apiserver of Kubernetes $(kubernetes_version) (the oldest claimed) into .cache/kube/bin"
    go build -buildvcs=false -trimpath -o "$out/kube-apiserver-oldest" \
      -ldflags "$(kubernetes_ldflags)" k8s.io/kubernetes/cmd/kube-apiserver
  )
  echo "$oldest_stamp" > "$out/stamp-oldest"
fi

if [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
need_go
mkdir -p "$out"
(
  cd "$module"
  echo "building Kubernetes $(kubernetes_version) components and etcd $(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3) into .cache/kube/bin"
  ldflags="$(kubernetes_ldflags)"
  for command in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    go build -buildvcs=false -trimpath -o "$out/$command" -ldflags "$ldflags" "k8s.io/kubernetes/cmd/$command"
  done
  go build -buildvcs=false -trimpath -o "$out/etcd" -ldflags "-s -w" go.etcd.io/etcd/server/v3
)
echo "building helm $helm_version and CoreDNS $coredns_version into .cache/kube/bin"
GOBIN="$out" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v4/cmd/helm@$helm_version"
GOBIN="$out" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$coredns_version"
echo "building Prometheus $prometheus_version and promtool into .cache/kube/bin"
for command in prometheus promtool; do
  GOBIN="$out" go install -trimpath -ldflags "-s -w" "github.com/prometheus/prometheus/cmd/$command@$prometheus_version"
done
echo "$stamp" > "$out/stamp"
