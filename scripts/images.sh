#!/usr/bin/env bash
# Builds the images the tests on a real node run, on a machine that reaches
# no container registry, and writes each as an archive under .cache/images
# (for `scripts/cluster.sh import` and `docker load`):
#
#   chat-server, chat-operator   the project's own Dockerfiles, BUILD=prebuilt:
#                                the binaries of the workspace's cargo build
#                                (target/debug; CHAT_IMAGE_PROFILE=release for
#                                target/release) and web/dist, on a local
#                                runtime base in place of distroless
#   redis                        Debian's redis-server
#   mongodb-standin              the MongoDB-wire-compatible SecantusDB
#   haproxy                      Debian's HAProxy, for compose.yaml's balancer
#
# The bases come from Debian's packages with mmdebstrap, and are made again
# only when what goes into them changes. Every image is named under localhost:5000,
# a registry nobody runs: a pull that slipped through would fail at once on
# loopback instead of leaving the machine.
#
#   scripts/images.sh [TAG...]      (default tag: test; the first tag is built,
#                                    the others are more names for it)
#
# A private Docker engine (data under .cache/docker) runs while this builds
# and is stopped after, by PID. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
registry=localhost:5000
out="$repo/.cache/images"
docker_dir="$repo/.cache/docker"
profile="${CHAT_IMAGE_PROFILE:-debug}"
tags=("${@:-test}")
docker=/usr/bin/docker # Debian's client: BuildKit without the buildx plugin
export DOCKER_HOST="unix://$docker_dir/docker.sock" DOCKER_BUILDKIT=1

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'images: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (a Docker engine and mmdebstrap)"
missing=()
[ -x "$docker" ] && command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} with apt"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
mkdir -p "$out"

# --- a private Docker engine ---------------------------------------------
dockerd_pid=
stop_dockerd() {
  if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
    kill -TERM "$dockerd_pid"
    for _ in $(seq 40); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$dockerd_pid" 2>/dev/null || true
  fi
  # Its containerd and the mounts under its data directory.
  # (A failure here would become the script's status: none may.)
  local mount
  while IFS= read -r mount; do umount -l "$mount" || true; done \
    < <(findmnt -rn -o TARGET | grep -F "$docker_dir/" | sort -r || true)
}
trap stop_dockerd EXIT
mkdir -p "$docker_dir"
# No bridge, no iptables rules, no IP forwarding (dockerd would turn it on
# and leave it on): builds need no network (nothing is
# fetched), and nothing of this engine outlives it.
dockerd --data-root "$docker_dir/data" --exec-root "$docker_dir/exec" \
  --host "$DOCKER_HOST" --pidfile "$docker_dir/docker.pid" \
  --bridge none --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false \
  > "$docker_dir/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 120); do "$docker" version >/dev/null 2>&1 && break; sleep 0.25; done
"$docker" version >/dev/null 2>&1 || die "dockerd did not start ($docker_dir/dockerd.log)"

# --- local bases ----------------------------------------------------------
base() { # name mmdebstrap-arguments... ; imports $registry/base/NAME:bookworm
  local name="$1" tarball="$out/base-$1.tar" stamp
  shift
  # Made again when its arguments change.
  stamp="$(printf '%s\n' "$@" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$tarball.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "base $name (mmdebstrap)"
    mmdebstrap --quiet --mode=root --format=tar \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      "$@" bookworm "$tarball"
    echo "$stamp" > "$tarball.stamp"
  fi
  "$docker" import "$tarball" "$registry/base/$name:bookworm" >/dev/null
}
users='root:x:0:0:root:/root:/usr/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin
redis:x:999:999:redis:/data:/usr/sbin/nologin'
groups='root:x:0:
nonroot:x:65532:
redis:x:999:'
accounts_hook="printf '%s\n' '$users' > \"\$1/etc/passwd\"; printf '%s\n' '$groups' > \"\$1/etc/group\"; mkdir -p \"\$1/home/nonroot\" \"\$1/tmp\" \"\$1/data\"; chmod 1777 \"\$1/tmp\"; chown 65532:65532 \"\$1/home/nonroot\"; chown 999:999 \"\$1/data\""
# What distroless/cc holds: glibc, libgcc, time zones, netbase; no shell.
base cc --variant=extract --include=libc6,libgcc-s1,tzdata,netbase,base-files \
  --customize-hook="$accounts_hook"
# Redis from Debian, with a shell for the operator's start scripts.
base redis --variant=essential --include=redis-server,redis-tools \
  --customize-hook="$accounts_hook"
# HAProxy from Debian (its package makes the `haproxy` user), and wget for
# compose.yaml's health check, as in the official image.
base haproxy --variant=essential --include=haproxy,wget
# SecantusDB and its dependencies from PyPI, on Debian's Python 3.11.
secantus="$(grep -E '^secantusdb==' scripts/requirements-test.txt)"
base mongodb-standin --variant=essential --include=python3,libstdc++6 \
  --customize-hook="$accounts_hook" \
  --customize-hook="python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --root-user-action=ignore --no-compile --target \"\$1/opt/secantus\" '$secantus'"

# --- the images -----------------------------------------------------------
tag="${tags[0]}"
for binary in chat-server chat-operator; do
  [ -x "target/$profile/$binary" ] || die "target/$profile/$binary missing: cargo build first"
done
[ -f web/dist/index.html ] || die "web/dist missing: (cd web && npm run build) first"
say "chat-server and chat-operator from their Dockerfiles (BUILD=prebuilt, target/$profile)"
rm -rf .cache/image
mkdir -p .cache/image/server/data .cache/image/operator
cp "target/$profile/chat-server" .cache/image/server/
cp -r web/dist .cache/image/server/web
cp "target/$profile/chat-operator" .cache/image/operator/
for image in server operator; do
  "$docker" build --quiet --network none -f "$image/Dockerfile" \
    --build-arg BUILD=prebuilt --build-arg "RUNTIME_IMAGE=$registry/base/cc:bookworm" \
    -t "$registry/chat-$image:$tag" . >/dev/null
done
rm -rf .cache/image

build_from() { # name base dockerfile-text
  printf '%s\n' "$3" | "$docker" build --quiet --network none --build-arg "BASE=$registry/base/$2:bookworm" \
    -t "$registry/$1:$tag" - >/dev/null
}
say "redis, mongodb-standin and haproxy"
# The official image's entrypoint: arguments alone (the operator's pods) or
# a .conf first (compose.yaml) go to redis-server; a command runs as given.
# shellcheck disable=SC2016 # ${BASE} is the Dockerfile's, not the shell's
build_from redis redis 'ARG BASE
FROM ${BASE}
USER 999:999
WORKDIR /data
ENTRYPOINT ["sh", "-c", "if [ \"${1#-}\" != \"$1\" ] || [ \"${1%.conf}\" != \"$1\" ]; then set -- redis-server \"$@\"; fi; exec \"$@\"", "docker-entrypoint"]
CMD ["redis-server"]'
# shellcheck disable=SC2016
# /data/db owned by its user, as in the mongo image: a new volume there takes
# that owner.
build_from mongodb-standin mongodb-standin 'ARG BASE
FROM ${BASE}
ENV PYTHONPATH=/opt/secantus PYTHONDONTWRITEBYTECODE=1
RUN mkdir -p /data/db && chown 999:999 /data/db
USER 999:999
EXPOSE 27017
ENTRYPOINT ["python3", "-m", "secantus", "--host", "0.0.0.0", "--port", "27017", "--storage-path", "/data/db"]'

# The official image's layout: the configuration in /usr/local/etc/haproxy,
# SIGUSR1 for a soft stop that lets open connections finish.
# shellcheck disable=SC2016
build_from haproxy haproxy 'ARG BASE
FROM ${BASE}
USER haproxy
STOPSIGNAL SIGUSR1
ENTRYPOINT ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]'

for image in chat-server chat-operator redis mongodb-standin haproxy; do
  for extra in "${tags[@]:1}"; do
    "$docker" tag "$registry/$image:$tag" "$registry/$image:$extra"
  done
  names=()
  for t in "${tags[@]}"; do names+=("$registry/$image:$t"); done
  "$docker" save -o "$out/$image.tar" "${names[@]}"
done
say "images in $out"
