#!/usr/bin/env bash
# One-shot job (compose service kafka-topics): creates the event topics
# <KAFKA_TOPIC_PREFIX>.<aggregate> with KAFKA_TOPIC_PARTITIONS partitions
# before command-service and the projector start.
#
# No --replication-factor: the brokers' default.replication.factor applies
# (1 on the single node, 3 on the cluster profile), so the topics always match
# the brokers that are actually running.
set -euo pipefail

bin=/opt/kafka/bin
brokers="${KAFKA_BROKERS:?}"
deadline=$((SECONDS + ${WAIT_SECONDS:-180}))

# Retries until the deadline: on the cluster profile the first broker answers
# before the other two have joined, and a replicated create fails until they have.
retry() { # description, command...
  local what="$1"
  shift
  until "$@"; do
    if ((SECONDS >= deadline)); then
      echo "kafka-topics: gave up on ${what} after ${WAIT_SECONDS:-180}s at ${brokers}." >&2
      echo "kafka-topics: is COMPOSE_PROFILES set to kafka-single or kafka-cluster (see .env.example)?" >&2
      exit 1
    fi
    sleep 3
  done
}

retry "reaching a broker" \
  bash -c "'$bin/kafka-broker-api-versions.sh' --bootstrap-server '$brokers' >/dev/null 2>&1"

for aggregate in ${EVENT_AGGREGATES:?}; do
  topic="${KAFKA_TOPIC_PREFIX:?}.${aggregate}"
  retry "creating ${topic}" \
    "$bin/kafka-topics.sh" --bootstrap-server "$brokers" --create --if-not-exists \
    --topic "$topic" --partitions "${KAFKA_TOPIC_PARTITIONS:?}"
  have="$("$bin/kafka-topics.sh" --bootstrap-server "$brokers" --describe --topic "$topic" \
    | sed -n 's/.*PartitionCount: *\([0-9]*\).*/\1/p' | head -n 1)"
  # An existing topic with fewer partitions is left alone: adding partitions
  # moves keys to other partitions, which must be planned (docs/SCALING.md).
  if [ "${have:-0}" -lt "$KAFKA_TOPIC_PARTITIONS" ]; then
    echo "kafka-topics: WARNING ${topic} has ${have:-?} partitions, fewer than ${KAFKA_TOPIC_PARTITIONS}; not changed" >&2
  fi
  echo "kafka-topics: ${topic} ready (${have:-?} partitions)"
done
