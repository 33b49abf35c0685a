#!/bin/sh
# Starts a Sentinel of a highly available ChatCluster.
#
# Its configuration, which Sentinel rewrites as it learns (the primary, the
# replicas, the other Sentinels, the epoch), lives on its volume: after a
# full restart the Sentinels still know which pod was the primary, so a
# lagging pod 0 does not win. Its ID derives from its pod name, so a
# Sentinel replaced with an empty volume is still the voter the others
# know, not one more (they would otherwise wait for a majority of every ID
# they ever saw). Pods are known by name (resolve-hostnames) and announce
# names (announce-hostnames): addresses change with every replacement.
#
# On a first start it watches the primary the other Sentinels name, once it
# answers as one, or the pod that answers as the primary.
#
# Environment: POD_NAME, ANNOUNCE, REDIS_PODS, SENTINEL_PODS, REDIS_HOST,
# MASTER_NAME, REDISCLI_AUTH (the password), DOWN_AFTER_MS (how long
# without an answer before a primary counts as down); CONFIG (default
# /data/sentinel.conf) and BIND (default every address) let a test run
# several on one host. The functions come from redis-common.sh.
set -eu
config=${CONFIG:-/data/sentinel.conf}
wait_for_own_name

if [ ! -s "$config" ]; then
  primary=""
  while [ -z "$primary" ]; do
    primary=$(named_primary)
    if [ -n "$primary" ] && ! is_primary "$primary"; then
      primary=""
    fi
    [ -n "$primary" ] || primary=$(running_primary)
    [ -n "$primary" ] || sleep 2
  done
  myid=$(printf '%s' "$POD_NAME" | sha1sum | cut -c 1-40)
  cat > "$config" <<CONF
port 26379
bind ${BIND:-* -::*}
sentinel resolve-hostnames yes
sentinel announce-hostnames no
sentinel announce-ip $ANNOUNCE
sentinel myid $myid
sentinel monitor $MASTER_NAME $primary 6379 2
sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS
sentinel failover-timeout $MASTER_NAME 18000
sentinel parallel-syncs $MASTER_NAME 1
CONF
fi

# The password as the Secret has it now, in place of what the file had.
grep -v -e '^requirepass ' -e '^sentinel sentinel-pass ' -e '^sentinel auth-pass ' "$config" > "$config.new" || true
cat >> "$config.new" <<CONF
requirepass $REDISCLI_AUTH
sentinel sentinel-pass $REDISCLI_AUTH
sentinel auth-pass $MASTER_NAME $REDISCLI_AUTH
CONF
mv "$config.new" "$config"
exec redis-server "$config" --sentinel
