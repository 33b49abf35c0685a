#!/usr/bin/env bash
# A one-node Kubernetes cluster on this machine, without kind: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, containerd with
# runc, a kubelet, kube-proxy (nftables) and CoreDNS, all as processes of this
# host, and pods on a bridge this script creates. The tests of the real node
# run on it (scripts/test.sh); a user can use it too (docs/kubernetes.md).
#
#   scripts/cluster.sh up       build what is missing, start, wait until Ready
#   scripts/cluster.sh status   what runs, and the node as the API server sees it
#   scripts/cluster.sh down     stop every process by PID, remove what up made
#   scripts/cluster.sh import IMAGE.tar...   images into the node's containerd
#
# Then: export KUBECONFIG=$PWD/.cache/cluster/kubeconfig (printed by up), and
# .cache/kube/bin/kubectl, .cache/kube/bin/helm.
#
# Needs root (a bridge, mounts, cgroups, nftables). Nothing leaves the
# machine: pods live on 10.250.0.0/24, Services on 10.251.0.0/24, the DNS of
# pods is this cluster's CoreDNS, which forwards nothing, and images are only
# ever imported (scripts/images.sh), never pulled. The kernel settings the
# kubelet and kube-proxy write are restored: right after they start, and by
# down to the values found before up.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

bin="$repo/.cache/kube/bin"
run="${CHAT_CLUSTER_DIR:-$repo/.cache/cluster}"
bridge=chatk8s0
node_name=chat-node
node_ip=10.250.0.1
pod_cidr=10.250.0.0/24
service_cidr=10.251.0.0/24
kubernetes_service_ip=10.251.0.1
etcd_port=12379
etcd_peer_port=12380
apiserver_port=16443
cgroup_root=/chatcluster
cni_bin=/usr/lib/cni
# The kernel settings this cluster needs or its components write.
sysctls=(
  net.ipv4.ip_forward
  net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables
  vm.overcommit_memory
  kernel.panic
  kernel.panic_on_oops
  net.ipv4.conf.all.route_localnet
)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'cluster: %s\n' "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root (a bridge, mounts, cgroups and nftables)"; }

# --- building -------------------------------------------------------------

install_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x "$cni_bin/bridge" ] || missing+=(containernetworking-plugins)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v nft >/dev/null || missing+=(nftables)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v gcc >/dev/null || missing+=(gcc libc6-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} with apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

build() {
  scripts/build-kube.sh
  # The pause image every pod's sandbox runs: Kubernetes' own pause.c,
  # static, in an image of nothing else.
  local pause_src
  pause_src="$(cd operator/tests/apiserver && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  if [ ! -s "$bin/pause.tar" ] || [ "$pause_src" -nt "$bin/pause.tar" ]; then
    say "building the pause image"
    local dir
    dir="$(mktemp -d)"
    gcc -Os -static -DVERSION=3.10-chatcluster -o "$dir/pause" "$pause_src"
    strip "$dir/pause"
    python3 scripts/oci_image.py --name localhost:5000/pause:3.10 \
      --entrypoint /pause --file "$dir/pause:/pause:0755" --out "$bin/pause.tar"
    rm -rf "$dir"
  fi
}

# --- certificates, tokens, kubeconfigs ----------------------------------

pki() {
  local pki="$run/pki"
  mkdir -p "$pki"
  [ -s "$pki/ca.crt" ] && return 0
  say "certificates"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=chatcluster-local-ca" -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  leaf() { # name subject extensions
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" \
      -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 3650 -extfile <(printf '%s\n' "$3") -out "$pki/$1.crt" 2>/dev/null
    rm -f "$pki/$1.csr"
  }
  leaf apiserver "/CN=kube-apiserver" \
    "subjectAltName=IP:$node_ip,IP:$kubernetes_service_ip,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost
extendedKeyUsage=serverAuth"
  leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
  leaf kubelet "/CN=$node_name" "subjectAltName=IP:$node_ip,DNS:$node_name
extendedKeyUsage=serverAuth"
  openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$pki/sa.key"
  openssl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  # Static tokens, one per component (user,uid,"groups").
  local token
  : > "$pki/tokens.csv"
  local file user group
  while IFS='|' read -r file user group; do
    token="$(openssl rand -hex 24)"
    echo "$token" > "$pki/$file.token"
    echo "$token,$user,$user${group:+,\"$group\"}" >> "$pki/tokens.csv"
  done <<TOKENS
admin|admin|system:masters
kubelet|system:node:$node_name|system:nodes
controller-manager|system:kube-controller-manager|
scheduler|system:kube-scheduler|
kube-proxy|system:kube-proxy|
coredns|chatcluster:coredns|
TOKENS
  chmod 0600 "$pki"/*.key "$pki"/*.token "$pki/tokens.csv"
}

kubeconfig() { # component -> path
  local file="$run/$1.kubeconfig"
  cat > "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: chatcluster-local
  cluster:
    server: https://$node_ip:$apiserver_port
    certificate-authority: $run/pki/ca.crt
users:
- name: $1
  user:
    token: $(cat "$run/pki/$1.token")
contexts:
- name: chatcluster-local
  context: {cluster: chatcluster-local, user: $1}
current-context: chatcluster-local
EOF
  chmod 0600 "$file"
  echo "$file"
}

# --- processes ------------------------------------------------------------

# Starts a process in the background, its output in logs/NAME.log and its PID
# in pids/NAME.
start() { # name command...
  local name="$1"
  shift
  mkdir -p "$run/logs" "$run/pids"
  if alive "$name"; then return 0; fi
  setsid "$@" > "$run/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$run/pids/$name"
}

alive() {
  local pid
  pid="$(cat "$run/pids/$1" 2>/dev/null)" || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

wait_for() { # what seconds command...
  local what="$1" limit="$2" i
  shift 2
  for ((i = 0; i < limit * 4; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  die "$what not ready after ${limit}s (logs in $run/logs)"
}

kubectl() { "$bin/kubectl" --kubeconfig "$run/kubeconfig" "$@"; }

# --- the kernel -----------------------------------------------------------

save_sysctls() {
  [ -s "$run/sysctl.before" ] && return 0
  local key
  for key in "${sysctls[@]}"; do
    [ -e "/proc/sys/${key//.//}" ] && echo "$key=$(sysctl -n "$key")"
  done > "$run/sysctl.before"
}

restore_sysctls() {
  [ -s "$run/sysctl.before" ] || return 0
  local line
  while IFS= read -r line; do
    # ip_forward and the bridge's netfilter calls are the cluster's own
    # needs while it runs; the rest goes back at once.
    case "$line" in
      net.ipv4.ip_forward=* | net.bridge.*) [ "${1:-}" = all ] || continue ;;
    esac
    sysctl -q -w "$line" >/dev/null
  done < "$run/sysctl.before"
}

network() {
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
    ip addr add "$node_ip/24" dev "$bridge"
    ip link set "$bridge" up
  fi
  sysctl -q -w net.ipv4.ip_forward=1
  # Replies from a Service's pod to a pod on the same bridge must pass
  # conntrack to be un-DNATed.
  sysctl -q -w net.bridge.bridge-nf-call-iptables=1
  sysctl -q -w net.bridge.bridge-nf-call-ip6tables=1
  mkdir -p "$run/cni/net.d" "$run/cni/ipam"
  cat > "$run/cni/net.d/10-chatcluster.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "chatcluster",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$run/cni/ipam",
        "ranges": [[{"subnet": "$pod_cidr", "rangeStart": "10.250.0.10", "gateway": "$node_ip"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF
  # Pods' resolver is CoreDNS on the node; never the host's.
  echo "nameserver $node_ip" > "$run/resolv.conf"
}

# --- up -------------------------------------------------------------------

up() {
  need_root
  install_packages
  build
  mkdir -p "$run"
  save_sysctls
  # The kubelet and kube-proxy add iptables(-nft) chains; down removes the
  # tables that were not here before, and their chains from those that were.
  [ -e "$run/nft.before" ] || nft list tables > "$run/nft.before"
  network
  pki
  local tokens="$run/pki/tokens.csv"
  cp "$(kubeconfig admin)" "$run/kubeconfig"

  say "etcd"
  start etcd "$bin/etcd" --name chatcluster --data-dir "$run/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "chatcluster=http://127.0.0.1:$etcd_peer_port" \
    --listen-metrics-urls "" --unsafe-no-fsync --quota-backend-bytes 4294967296

  say "kube-apiserver"
  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$node_ip" --advertise-address "$node_ip" --secure-port "$apiserver_port" \
    --tls-cert-file "$run/pki/apiserver.crt" --tls-private-key-file "$run/pki/apiserver.key" \
    --client-ca-file "$run/pki/ca.crt" --token-auth-file "$tokens" \
    --kubelet-client-certificate "$run/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$run/pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction,OwnerReferencesPermissionEnforcement \
    --service-cluster-ip-range "$service_cidr" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$run/pki/sa.pub" --service-account-signing-key-file "$run/pki/sa.key" \
    --allow-privileged=false --profiling=false --v=1
  wait_for "kube-apiserver" 60 kubectl get --raw /readyz

  say "RBAC for CoreDNS"
  kubectl apply -f - >/dev/null <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: chatcluster:coredns}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: chatcluster:coredns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "chatcluster:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "chatcluster:coredns"}
EOF

  say "kube-controller-manager"
  # At its first start it can exit on the bootstrap RBAC not being there yet.
  wait_for "the controller-manager's RBAC" 60 \
    bash -c "[ \"\$('$bin/kubectl' --kubeconfig '$run/kubeconfig' auth can-i get configmaps -n kube-system --as system:kube-controller-manager)\" = yes ]"
  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$(kubeconfig controller-manager)" \
    --authentication-kubeconfig "$run/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$run/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10257 --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$run/pki/sa.key" --root-ca-file "$run/pki/ca.crt" \
    --cluster-signing-cert-file "$run/pki/ca.crt" --cluster-signing-key-file "$run/pki/ca.key" \
    --service-cluster-ip-range "$service_cidr" --v=1

  say "kube-scheduler"
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$(kubeconfig scheduler)" \
    --authentication-kubeconfig "$run/scheduler.kubeconfig" \
    --authorization-kubeconfig "$run/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false --v=1

  say "containerd"
  alive containerd || containerd_config
  # The pods' network namespaces are named cni-*; those here before are
  # someone else's.
  [ -e "$run/netns.before" ] || { ip netns list 2>/dev/null | awk '{print $1}' > "$run/netns.before"; }
  start containerd containerd --config "$run/containerd/config.toml"
  wait_for "containerd" 30 ctr --address "$run/containerd/containerd.sock" version
  import "$bin/pause.tar"

  say "kubelet"
  alive kubelet || { kubelet_config; cgroups; }
  start kubelet "$bin/kubelet" --config "$run/kubelet/config.yaml" \
    --kubeconfig "$(kubeconfig kubelet)" --root-dir "$run/kubelet/root" \
    --hostname-override "$node_name" --node-ip "$node_ip" --v=1
  wait_for "the node" 60 kubectl get node "$node_name"
  # The kubelet writes vm.overcommit_memory, kernel.panic and
  # kernel.panic_on_oops as it starts its container manager.
  sleep 1
  restore_sysctls

  say "kube-proxy (nftables)"
  # Written only for a kube-proxy about to start: it exits when its
  # configuration file changes.
  alive kube-proxy || cat > "$run/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: $pod_cidr
hostnameOverride: $node_name
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$node_ip/32"]
clientConnection:
  kubeconfig: $(kubeconfig kube-proxy)
# 0 leaves the machine's conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  start kube-proxy "$bin/kube-proxy" --config "$run/kube-proxy.yaml" --v=1

  say "CoreDNS"
  # The cluster's names; every other name is answered NXDOMAIN at once:
  # nothing is forwarded to the host's resolver or beyond.
  alive coredns || cat > "$run/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $node_ip
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $(kubeconfig coredns)
        pods insecure
    }
    cache 30
}
.:53 {
    bind $node_ip
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF
  start coredns "$bin/coredns" -conf "$run/Corefile"

  wait_for "the node to be Ready" 90 \
    bash -c "'$bin/kubectl' --kubeconfig '$run/kubeconfig' get node $node_name -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  wait_for "CoreDNS" 30 curl -fsS http://127.0.0.1:18181/ready
  volumes
  restore_sysctls
  say "ready: export KUBECONFIG=$run/kubeconfig"
}

# Storage as on a bare-metal cluster: local persistent volumes, each a
# directory of the node, in the default StorageClass, bound when a pod is
# scheduled. There is no provisioner, so the pool is made here, and topped
# up to CHAT_CLUSTER_VOLUMES available ones by every `up`; a volume released
# stays Released (its data kept), as `helm uninstall` should leave it.
volumes() {
  local want=${CHAT_CLUSTER_VOLUMES:-24} i manifest="" available existing
  available="$(kubectl get pv -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c '^Available$' || true)"
  existing="$(kubectl get pv -o name | wc -l)"
  manifest+="apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: \"true\"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
"
  for ((i = existing; i < existing + want - available; i++)); do
    # Writable by the pods' non-root users; nothing else on the machine
    # reaches into the state directory.
    mkdir -p "$run/volumes/pv-$i"
    chmod 0777 "$run/volumes/pv-$i"
    manifest+="---
apiVersion: v1
kind: PersistentVolume
metadata: {name: local-pv-$i}
spec:
  capacity: {storage: 20Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local
  local: {path: $run/volumes/pv-$i}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [$node_name]}
"
  done
  printf '%s' "$manifest" | kubectl apply -f - >/dev/null
}

containerd_config() {
  mkdir -p "$run/containerd"
  cat > "$run/containerd/config.toml" <<EOF
version = 2
root = "$run/containerd/root"
state = "$run/containerd/state"
# Plugins that would serve other clients of this host, off.
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$run/containerd/containerd.sock"

[ttrpc]
  address = "$run/containerd/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  # An image imported under this name: containerd never pulls it.
  sandbox_image = "localhost:5000/pause:3.10"
  # This machine lacks CAP_SYS_RESOURCE: without this, every sandbox fails
  # ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$run/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$run/containerd/certs.d"
EOF
  # Every registry points at a closed loopback port: a pull that slips
  # through fails at once instead of leaving the machine.
  mkdir -p "$run/containerd/certs.d/_default"
  cat > "$run/containerd/certs.d/_default/hosts.toml" <<'EOF'
server = "http://127.0.0.1:9"
[host."http://127.0.0.1:9"]
  capabilities = ["pull", "resolve"]
EOF
}

# The pods' cgroups go under $cgroup_root in every hierarchy (cgroup v1),
# which the kubelet expects to exist; a new cpuset starts with no CPUs and
# no memory nodes, so it takes its parent's.
cgroups() {
  local controller dir
  for controller in /sys/fs/cgroup/*/; do
    [ "$controller" = /sys/fs/cgroup/unified/ ] && continue
    dir="$controller${cgroup_root#/}"
    mkdir -p "$dir"
    if [ -e "$dir/cpuset.cpus" ]; then
      cat "$controller/cpuset.cpus" > "$dir/cpuset.cpus"
      cat "$controller/cpuset.mems" > "$dir/cpuset.mems"
    fi
  done
}

kubelet_config() {
  mkdir -p "$run/kubelet/root" "$run/kubelet/pod-logs"
  cat > "$run/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine's cgroups are v1; 1.36 still runs on them when told to.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $cgroup_root
containerRuntimeEndpoint: unix://$run/containerd/containerd.sock
podLogsDir: $run/kubelet/pod-logs
address: $node_ip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
tlsCertFile: $run/pki/kubelet.crt
tlsPrivateKeyFile: $run/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $run/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$node_ip]
resolvConf: $run/resolv.conf
failSwapOn: false
serializeImagePulls: false
# The disk is shared with everything else on this machine: evict only when
# it is really full, and never collect the imported images.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
}

import() { # image tarballs
  local tarball
  for tarball in "$@"; do
    ctr --address "$run/containerd/containerd.sock" -n k8s.io images import --no-unpack=false "$tarball" >/dev/null \
      || die "importing $tarball"
  done
}

# --- down -----------------------------------------------------------------

stop_pid() { # name
  local pid
  pid="$(cat "$run/pids/$1" 2>/dev/null)" || return 0
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$run/pids/$1"
}

# Every process in the pods' cgroups, and the cgroups themselves.
stop_pods() {
  local controller dir pid
  for controller in /sys/fs/cgroup/*/; do
    dir="$controller${cgroup_root#/}"
    [ -d "$dir" ] || continue
    while IFS= read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done \
      < <(find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null)
  done
  # The shims of this containerd (their parent is gone once it stops).
  local shim
  for shim in $(pgrep -f "containerd-shim-runc-v2 .*-address $run/containerd/containerd.sock" || true); do
    kill -KILL "$shim" 2>/dev/null || true
  done
  sleep 0.5
  for controller in /sys/fs/cgroup/*/; do
    dir="$controller${cgroup_root#/}"
    [ -d "$dir" ] || continue
    find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

down() {
  need_root
  [ -d "$run" ] || { say "nothing to stop"; return 0; }
  say "stopping the node and the control plane"
  stop_pid kube-proxy
  stop_pid kubelet
  stop_pods
  stop_pid containerd
  stop_pid coredns
  stop_pid kube-scheduler
  stop_pid kube-controller-manager
  stop_pid kube-apiserver
  stop_pid etcd
  firewall
  # The network namespaces containerd made for pods (their names carry the
  # sandbox), then every mount under the state directory, deepest first.
  local netns
  for netns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-' || true); do
    grep -qx "$netns" "$run/netns.before" 2>/dev/null || ip netns delete "$netns" 2>/dev/null || true
  done
  local mount
  while IFS= read -r mount; do umount -l "$mount" 2>/dev/null || true; done \
    < <(findmnt -rn -o TARGET | grep -F "$run/" | sort -r)
  ip link delete "$bridge" 2>/dev/null || true
  # The veths of pods on the bridge went with their namespaces.
  restore_sysctls all
  rm -rf "$run"
  say "stopped; $run removed"
}

# kube-proxy's nftables tables, and the KUBE-* chains the kubelet and
# kube-proxy keep in iptables' tables (KUBE-FIREWALL, the canaries, hints).
firewall() {
  local family name command chain
  while read -r _ family name; do
    if ! grep -qx "table $family $name" "$run/nft.before" 2>/dev/null; then
      nft delete table "$family" "$name" 2>/dev/null || true
      continue
    fi
    case "$family" in ip) command=iptables ;; ip6) command=ip6tables ;; *) continue ;; esac
    # Rules that jump to KUBE-* chains first, then the chains.
    "$command" -t "$name" -S 2>/dev/null | grep -E '^-A .* -j KUBE-' | sed 's/^-A/-D/' \
      | while read -r -a rule; do "$command" -t "$name" "${rule[@]}" 2>/dev/null || true; done
    for chain in $("$command" -t "$name" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
      "$command" -t "$name" -F "$chain" 2>/dev/null || true
      "$command" -t "$name" -X "$chain" 2>/dev/null || true
    done
  done < <(nft list tables 2>/dev/null)
}

status() {
  local name
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy coredns; do
    if alive "$name"; then echo "$name: running (pid $(cat "$run/pids/$name"))"; else echo "$name: stopped"; fi
  done
  if alive kube-apiserver; then
    kubectl get nodes -o wide
    echo "export KUBECONFIG=$run/kubeconfig"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  build) install_packages; build ;;
  import) shift; import "$@" ;;
  *) echo "usage: $0 up|down|status|build|import IMAGE.tar..." >&2; exit 2 ;;
esac
