#!/bin/sh
# A CA and a broker certificate for Kafka's SASL_SSL listener (docker-compose, tests/integration/test_kafka_sasl.py).
#   infra/kafka/make-certs.sh OUT_DIR HOSTNAME [KEYSTORE_PASSWORD]
# Writes OUT_DIR/ca.pem (give it to clients: CONFLUX_KAFKA_SSL_CAFILE) and OUT_DIR/kafka.p12 (the broker's
# keystore, PKCS12, protected by KEYSTORE_PASSWORD or $KAFKA_KEYSTORE_PASSWORD). A cluster with its own PKI uses
# its own certificates instead; nothing else here depends on this script.
set -eu
out=$1 host=$2 pass=${3:-${KAFKA_KEYSTORE_PASSWORD:?set KAFKA_KEYSTORE_PASSWORD or pass it as the third argument}}
mkdir -p "$out"
cd "$out"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 825 -subj "/CN=conflux-kafka-ca" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout kafka.key -out kafka.csr -subj "/CN=$host" 2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\n' "$host" > san.ext
openssl x509 -req -in kafka.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out kafka.pem -days 825 \
  -extfile san.ext 2>/dev/null
openssl pkcs12 -export -in kafka.pem -inkey kafka.key -certfile ca.pem -out kafka.p12 -passout "pass:$pass"
rm -f kafka.csr san.ext ca.srl kafka.key kafka.pem
# Bind-mounted into containers that do not run as root: the CA certificate is public, the keystore is encrypted
# with its password; the CA's key stays readable by its owner only.
chmod 755 .
chmod 644 ca.pem kafka.p12
chmod 600 ca.key
echo "wrote $out/ca.pem and $out/kafka.p12 (keep $out/ca.key offline)"
