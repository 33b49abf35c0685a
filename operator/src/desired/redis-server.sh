#!/bin/sh
# Starts a Redis pod of a highly available ChatCluster.
#
# - The Sentinels name a primary: follow it by name, even while it does not answer
#   (all pods replaced at once, say): it comes back under its name, or the
#   Sentinels fail it over and point this pod at the new one. Named itself,
#   this pod is the primary again, from its append-only file (the CRD
#   refuses replicas without persistence, so it never comes back empty).
# - No Sentinel names one (the first start; the Sentinels keep what they
#   know on their volumes): follow the pod that answers as the primary,
#   asking every pod by name; pod 0 starts as the primary when none does.
#   Only pod 0 ever elects itself, so two pods never both do.
# - A replica may be promoted only once it has synced with its primary since
#   it started. Until then it holds at most its own data from before, stale
#   if it was down while the primary took writes, and the Sentinels cannot
#   tell: they would promote it over a primary that is only slow to come
#   back (every pod restarted, the primary's pod scheduled last), and the
#   writes only that primary had would be lost. So it starts with
#   replica-priority 0 (never promoted), and its readiness probe
#   (redis-ready.sh) gives it the default back once its link is up. The price: with no synced replica and the primary gone for
#   good, nothing is promoted until someone acts.
#
# Arguments: redis-server's. Environment: POD_NAME, ANNOUNCE (this pod's
# stable name), REDIS_PODS and SENTINEL_PODS (every pod's name), REDIS_HOST
# (the Service of every Redis pod), MASTER_NAME, REDISCLI_AUTH (the password,
# for the servers and the Sentinels alike). The functions come from
# redis-common.sh, put in front.
set -eu
wait_for_own_name

primary=""
while [ -z "$primary" ]; do
  named=$(named_primary)
  if [ -n "$named" ]; then
    case $named in
      # This pod, by its name or by the address the Sentinels resolved it
      # to (they answer clients with addresses): the primary again, not a
      # replica of itself.
      "$POD_IP" | "$ANNOUNCE") primary=$ANNOUNCE ;;
      # Another pod, by its name.
      *[!0-9.:a-f]*) primary=$named ;;
      # An address, not a name: a server from before the pods had names,
      # gone for good once it does not answer (its pod was replaced):
      # wait for the Sentinels' failover rather than follow it.
      *) is_primary "$named" && primary=$named ;;
    esac
  else
    primary=$(running_primary)
    if [ -z "$primary" ] && [ "${POD_NAME##*-}" = 0 ]; then
      primary=$ANNOUNCE
    fi
  fi
  [ -n "$primary" ] || sleep 2
done

if [ "$primary" = "$ANNOUNCE" ]; then
  exec redis-server "$@" --replica-announce-ip "$ANNOUNCE"
fi
exec redis-server "$@" --replica-announce-ip "$ANNOUNCE" --replicaof "$primary" 6379 --replica-priority 0
