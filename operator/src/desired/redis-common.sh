#!/bin/sh
# Shared by the scripts of a highly available ChatCluster's Redis and
# Sentinel pods; the operator puts it in front of each.
#
# Pods are known by stable names (ANNOUNCE, REDIS_PODS, SENTINEL_PODS: the
# StatefulSets' pods under their headless Services), never by IP: a pod
# replaced on another address keeps its name, and the Sentinels resolve it
# again when they reconnect. Every call has a deadline, since a name can
# resolve to the address of a pod that is gone.

# Waits, up to a minute, until this pod's name resolves to its address.
# A server the Sentinels first see under a name that does not resolve yet
# (the headless Service's record lags the pod by a moment) becomes a
# phantom in their tables, with no address, and later the same server a
# second time: a failover then tells the promoted server to replicate from
# itself, and nothing is the primary until the failover times out.
wait_for_own_name() {
  [ "$ANNOUNCE" != "$POD_IP" ] || return 0
  tries=0
  until getent hosts "$ANNOUNCE" | grep -q "^${POD_IP}[[:space:]]"; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
      echo "$ANNOUNCE does not resolve to $POD_IP after a minute; starting anyway" >&2
      return 0
    fi
    sleep 1
  done
}

# Whether the server at $1 answers as a primary.
is_primary() {
  timeout 3 redis-cli -h "$1" -p 6379 role 2>/dev/null | head -n 1 | grep -qx master
}

# The primary the Sentinels name, whether or not it answers (if it is down,
# they are failing it over). They may disagree for a while after every pod
# came back on a new address: the ones that resolved the last primary's name
# again answer its new address, the others the old one. So of their
# answers, the first that is this pod, a name, or an address answering as
# the primary wins; else the first answer.
named_primary() {
  first=""
  for sentinel in $SENTINEL_PODS; do
    # Two lines (host, port) when it knows one; nothing or an error
    # otherwise: split into words on purpose, to count them.
    # shellcheck disable=SC2046
    set -- $(timeout 3 redis-cli -h "$sentinel" -p 26379 sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null)
    if [ $# != 2 ] || [ "$2" != 6379 ]; then
      continue
    fi
    case $1 in
      "$POD_IP" | "$ANNOUNCE" | *[!0-9.:a-f]*) echo "$1"; return ;;
    esac
    if is_primary "$1"; then
      echo "$1"
      return
    fi
    [ -n "$first" ] || first=$1
  done
  [ -z "$first" ] || echo "$first"
}

# How the server at $1 names itself, if it answers as the primary: its
# announced name or, for a server started before it had Sentinels (it
# announces nothing), the address the connection reached. One connection,
# since $1 may be a Service that sends the next one elsewhere.
primary_at() {
  answer=$(printf 'ROLE\nCONFIG GET replica-announce-ip\nCLIENT INFO\n' |
    timeout 3 redis-cli -h "$1" -p 6379 2>/dev/null) || true
  [ "$(printf '%s\n' "$answer" | head -n 1)" = master ] || return 0
  announced=$(printf '%s\n' "$answer" | sed -n '/^replica-announce-ip$/{n;p;}')
  if [ -n "$announced" ]; then
    echo "$announced"
  else
    printf '%s\n' "$answer" | sed -n 's/.* laddr=\([^ ]*\):[0-9]* .*/\1/p'
  fi
}

# The primary among the Redis pods, asking every one (and the Service
# REDIS_HOST, which reaches a pod that predates the names): the first that
# answers as the primary. Empty when none does.
running_primary() {
  for pod in $REDIS_PODS $REDIS_HOST; do
    [ "$pod" = "$ANNOUNCE" ] && continue
    found=$(primary_at "$pod")
    if [ -n "$found" ]; then
      echo "$found"
      return
    fi
  done
}
