#!/bin/sh
# Starts a Sentinel of a highly available ChatCluster, watching the primary
# the other Sentinels name or, when none runs yet, the Redis pod that answers
# as the primary. Sentinel rewrites its configuration as it learns, so it is
# written to a writable volume; a restarted Sentinel learns it all again.
#
# Environment: POD_IP, REDISCLI_AUTH (the password), SENTINEL_HOST,
# REDIS_HOST, MASTER_NAME, and DOWN_AFTER_MS (how long without an answer
# before a primary counts as down); CONFIG (default /data/sentinel.conf) and
# BIND (default every address) let a test run several on one host.
# is_primary and service_primary come from redis-common.sh, put in front.
set -eu
config=${CONFIG:-/data/sentinel.conf}

primary=""
while [ -z "$primary" ]; do
  named=$(redis-cli -h "$SENTINEL_HOST" -p 26379 sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1 || true)
  if [ -n "$named" ] && is_primary "$named"; then
    primary=$named
  else
    primary=$(service_primary)
  fi
  [ -n "$primary" ] || sleep 2
done

cat > "$config" <<CONF
port 26379
bind ${BIND:-* -::*}
sentinel announce-ip $POD_IP
requirepass $REDISCLI_AUTH
sentinel sentinel-pass $REDISCLI_AUTH
sentinel monitor $MASTER_NAME $primary 6379 2
sentinel auth-pass $MASTER_NAME $REDISCLI_AUTH
sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS
sentinel failover-timeout $MASTER_NAME 18000
sentinel parallel-syncs $MASTER_NAME 1
CONF
exec redis-server "$config" --sentinel
