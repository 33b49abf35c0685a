#!/bin/sh
# The readiness probe of a Redis pod of a highly available ChatCluster:
# ready when it answers. It also makes a replica promotable once it has
# synced: the start script runs replicas with replica-priority 0 (never
# promoted), since one that has not synced since it started holds at most
# its own, possibly stale, data; here, once its link to the primary is up,
# it gets the default back. The probe does it because it runs in the pod
# every few seconds for as long as the pod lives, with nothing to keep
# running beside the server.
#
# Environment: POD_IP (the address the server listens on), REDISCLI_AUTH.
set -eu
cli() { timeout 3 redis-cli -h "${POD_IP:-127.0.0.1}" -p 6379 "$@"; }
[ "$(cli ping)" = PONG ] || exit 1
case $(cli info replication) in
  *master_link_status:up*)
    if [ "$(cli config get replica-priority | tail -n 1)" = 0 ]; then
      cli config set replica-priority 100 >/dev/null
    fi
    ;;
esac
