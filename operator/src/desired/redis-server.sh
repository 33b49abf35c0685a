#!/bin/sh
# Starts a Redis pod of a highly available ChatCluster: as a replica of the
# primary the Sentinels name or, when none does yet, of the primary among the
# running pods; pod 0 starts as the primary when nothing runs at all. A pod
# that came back after a failover so never takes writes beside the new
# primary: it follows it, and the Sentinels see it as a replica.
#
# Arguments: redis-server's. Environment: POD_NAME, POD_IP, REDISCLI_AUTH (the
# password, for the servers and the Sentinels alike), SENTINEL_HOST (the
# Sentinels' Service), REDIS_HOST (the Service of every Redis pod), MASTER_NAME.
# is_primary and service_primary come from redis-common.sh, put in front.
set -eu

primary=""
while [ -z "$primary" ]; do
  named=$(redis-cli -h "$SENTINEL_HOST" -p 26379 sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1 || true)
  if [ -n "$named" ]; then
    # The Sentinels' primary, unless it does not answer as one (this pod's
    # old address, say): then their failover is under way; wait for it.
    if [ "$named" = "$POD_IP" ] || is_primary "$named"; then
      primary=$named
    fi
  else
    # No Sentinel knows one yet (the first start, or all of them restarted):
    # the primary among the running pods or, if none runs, pod 0.
    primary=$(service_primary)
    if [ -z "$primary" ] && [ "${POD_NAME##*-}" = 0 ]; then
      primary=$POD_IP
    fi
  fi
  [ -n "$primary" ] || sleep 2
done

if [ "$primary" = "$POD_IP" ]; then
  exec redis-server "$@" --replica-announce-ip "$POD_IP"
fi
exec redis-server "$@" --replica-announce-ip "$POD_IP" --replicaof "$primary" 6379
