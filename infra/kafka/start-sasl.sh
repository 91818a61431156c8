#!/bin/sh
# Kafka as docker-compose runs it: one KRaft node, SASL_SSL (SCRAM-SHA-512) for every client, and the
# StandardAuthorizer refusing whatever infra/kafka/acls.toml does not grant (`conflux topics acls` applies it).
# The first start formats the storage with the SCRAM users of the Conflux services (KRaft keeps SCRAM
# credentials in its metadata log; `kafka-storage format --add-scram` creates them before the broker starts).
# Later starts keep the storage and its users. tests/integration/test_kafka_sasl.py runs this very script.
#
# Passwords: URL- and SCRAM-safe characters (openssl rand -hex 32). More users (downstream teams) are added on
# a running cluster with kafka-configs.sh --alter --add-config 'SCRAM-SHA-512=[password=...]' as admin.
set -eu
KAFKA_HOME=${KAFKA_HOME:-/opt/kafka}
KAFKA_DATA=${KAFKA_DATA:-/var/lib/kafka/data}
KAFKA_HOST=${KAFKA_HOST:-kafka}            # the name clients reach the broker by (and its certificate holds)
KAFKA_LISTEN=${KAFKA_LISTEN:-}             # interface to bind; empty: all
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_KEYSTORE=${KAFKA_KEYSTORE:-/etc/kafka/secrets/kafka.p12}
KAFKA_CA=${KAFKA_CA:-/etc/kafka/secrets/ca.pem}  # the CA that signed the keystore: the broker trusts itself
KAFKA_CLUSTER_ID=${KAFKA_CLUSTER_ID:-CnflxKafkaCluster00001}
for v in KAFKA_KEYSTORE_PASSWORD CONFLUX_KAFKA_ADMIN_PASSWORD CONFLUX_KAFKA_TOPICS_PASSWORD \
         CONFLUX_KAFKA_EDGE_PASSWORD CONFLUX_KAFKA_WORKER_PASSWORD CONFLUX_KAFKA_SINK_PASSWORD; do
  eval "val=\${$v:-}"
  [ -n "$val" ] || { echo "kafka: $v is not set; refusing to start" >&2; exit 2; }
done
for f in "$KAFKA_KEYSTORE" "$KAFKA_CA"; do
  [ -r "$f" ] || { echo "kafka: cannot read $f (infra/kafka/make-certs.sh)" >&2; exit 2; }
done

conf=${KAFKA_CONF:-/tmp/conflux-kafka.properties}
umask 077  # the file holds the admin password
cat > "$conf" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=SASL_SSL://$KAFKA_LISTEN:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=SASL_SSL://$KAFKA_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$CONFLUX_KAFKA_ADMIN_PASSWORD";
ssl.keystore.type=PKCS12
ssl.keystore.location=$KAFKA_KEYSTORE
ssl.keystore.password=$KAFKA_KEYSTORE_PASSWORD
ssl.truststore.type=PEM
ssl.truststore.location=$KAFKA_CA
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
# admin: the broker itself and `conflux topics acls`. ANONYMOUS: the controller listener's principal, which
# listens on the loopback interface only.
super.users=User:admin;User:ANONYMOUS
log.dirs=$KAFKA_DATA
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
message.max.bytes=10485760
PROPS

# The admin's client settings, for the health check and for an operator's kafka-*.sh --command-config.
cat > "${KAFKA_ADMIN_CLIENT_CONF:-/tmp/conflux-admin-client.properties}" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$CONFLUX_KAFKA_ADMIN_PASSWORD";
ssl.truststore.type=PEM
ssl.truststore.location=$KAFKA_CA
PROPS

# KAFKA_EXTRA_USERS="team-a:PASSWORD team-b:PASSWORD": more users created at format time (downstream readers).
extra=""
for pair in ${KAFKA_EXTRA_USERS:-}; do
  extra="$extra -S SCRAM-SHA-512=[name=${pair%%:*},password=${pair#*:}]"
done
if [ ! -f "$KAFKA_DATA/meta.properties" ]; then
  "$KAFKA_HOME/bin/kafka-storage.sh" format --cluster-id "$KAFKA_CLUSTER_ID" -c "$conf" \
    -S "SCRAM-SHA-512=[name=admin,password=$CONFLUX_KAFKA_ADMIN_PASSWORD]" \
    -S "SCRAM-SHA-512=[name=conflux-topics,password=$CONFLUX_KAFKA_TOPICS_PASSWORD]" \
    -S "SCRAM-SHA-512=[name=conflux-edge,password=$CONFLUX_KAFKA_EDGE_PASSWORD]" \
    -S "SCRAM-SHA-512=[name=conflux-worker,password=$CONFLUX_KAFKA_WORKER_PASSWORD]" \
    -S "SCRAM-SHA-512=[name=conflux-sink,password=$CONFLUX_KAFKA_SINK_PASSWORD]" $extra
fi
exec "$KAFKA_HOME/bin/kafka-server-start.sh" "$conf"
