#!/bin/sh
# Shared by the start scripts of a highly available ChatCluster's Redis and
# Sentinel pods; the operator puts it in front of each.

# Whether the server at $1 answers as a primary.
is_primary() {
  redis-cli -h "$1" -p 6379 info replication 2>/dev/null | grep -q '^role:master'
}

# The address of the primary among the Redis pods behind the Service
# $REDIS_HOST, if the pod one connection reaches is the primary: its role and
# its announced address in one connection, since the Service may send the
# next one to another pod.
service_primary() {
  printf 'ROLE\nCONFIG GET replica-announce-ip\n' |
    redis-cli -h "$REDIS_HOST" -p 6379 2>/dev/null |
    { read -r role && [ "$role" = master ] && tail -n 1; } || true
}
