#!/bin/sh
# Once, before the first `docker compose up -d`: random secrets in .env (which docker compose reads) and Kafka's
# CA and keystore in secrets/kafka/. Both stay out of git (.gitignore). An existing .env is left alone.
#   infra/compose-secrets.sh
set -eu
cd "$(dirname "$0")/.."
if [ -e .env ]; then
  echo ".env exists; leaving it as it is"
else
  (
    umask 077
    for v in CONFLUX_ID_SECRET KAFKA_KEYSTORE_PASSWORD CONFLUX_KAFKA_ADMIN_PASSWORD CONFLUX_KAFKA_TOPICS_PASSWORD \
             CONFLUX_KAFKA_EDGE_PASSWORD CONFLUX_KAFKA_WORKER_PASSWORD CONFLUX_KAFKA_SINK_PASSWORD \
             CONFLUX_REDIS_PASSWORD CONFLUX_CLICKHOUSE_PASSWORD CONFLUX_WEAVIATE_API_KEY; do
      echo "$v=$(openssl rand -hex 32)"
    done > .env
  )
  echo "wrote .env"
fi
if [ -e secrets/kafka/kafka.p12 ]; then
  echo "secrets/kafka/kafka.p12 exists; leaving it as it is"
else
  KAFKA_KEYSTORE_PASSWORD=$(sed -n 's/^KAFKA_KEYSTORE_PASSWORD=//p' .env)
  infra/kafka/make-certs.sh secrets/kafka kafka "$KAFKA_KEYSTORE_PASSWORD"
fi
