#!/bin/sh
# The one-shot `secrets` service of compose.yaml: on the first `docker compose
# up` it generates every secret the deployment needs into the `secrets`
# volume; later starts keep them, because the data volumes were made with
# them (a new MongoDB password over an old database would lock the servers
# out). The other services read them as files (`*_FILE`), so no secret is
# typed into .env or shown by `docker inspect`.
#
# To see one: docker compose run --rm secrets cat /data/redis-password
# To rotate them all: docker compose down --volumes (this deletes the data).
set -eu
dir=/data # the secrets volume, in this service
db="${MONGO_DB:-chat}"
user="${MONGO_APP_USER:-chat}"

random() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# Written whole under a temporary name, then renamed: a start interrupted
# midway never leaves a half-written secret behind.
put() {
  printf '%s\n' "$2" > "$dir/.$1.tmp"
  chmod 0444 "$dir/.$1.tmp"
  mv "$dir/.$1.tmp" "$dir/$1"
}

for secret in jwt redis-password mongodb-root-password mongodb-app-password; do
  if [ ! -s "$dir/$secret" ]; then
    put "$secret" "$(random)"
    echo "generated $secret"
  fi
done

# What is derived from them is written again on every start (MONGO_DB and
# MONGO_APP_USER may have changed).
redis_password="$(cat "$dir/redis-password")"
app_password="$(cat "$dir/mongodb-app-password")"
put redis.conf "requirepass $redis_password"
put redis-url "redis://:$redis_password@redis:6379"
put mongodb-uri "mongodb://$user:$app_password@mongodb:27017/$db?authSource=$db"
