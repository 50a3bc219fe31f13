"""A subscriber that knows everyone's current segments, however late it starts.

1. Read segment-memberships (compacted: each customer's current segments) from the beginning.
2. Read segment-changes from the oldest change retained, applying each change in order:
   this repeats changes the memberships already hold (harmless: a change sets a segment),
   and it cannot miss one (see README, "Subscribing to segments").
3. Caught up: follow segment-changes and act on each change as it comes.

Run: python examples/subscriber.py --bootstrap localhost:9094 [--once]
(--once: stop when caught up and print everyone's segments as JSON.)
"""

import argparse
import json

from kafka import KafkaConsumer, TopicPartition


def read_to_end(consumer, topic, on_record):
    """Every record of ``topic`` from its beginning to (at least) its end as of now."""
    numbers = consumer.partitions_for_topic(topic)
    if not numbers:
        raise SystemExit(f"no topic {topic} on this cluster")
    parts = [TopicPartition(topic, p) for p in sorted(numbers)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    end = consumer.end_offsets(parts)
    while True:
        batch = consumer.poll(timeout_ms=500)
        for records in batch.values():
            for record in records:
                on_record(record)
        # past the end, and nothing fetched is left unread (a broker that reports an end
        # offset inside its last record batch, as the embedded one does, is read out too)
        drained = sum(map(len, batch.values())) < consumer.config["max_poll_records"]
        if drained and all(consumer.position(tp) >= end[tp] for tp in parts):
            return parts


def main():
    args = argparse.ArgumentParser()
    args.add_argument("--bootstrap", default="localhost:9094")
    args.add_argument("--memberships-topic", default="segment-memberships")
    args.add_argument("--changes-topic", default="segment-changes")
    args.add_argument("--once", action="store_true")
    opts = args.parse_args()
    consumer = KafkaConsumer(bootstrap_servers=opts.bootstrap, group_id=None,
                             enable_auto_commit=False)
    segments = {}  # customer id -> {segmentation: segment id}

    def membership(record):
        if record.value is None:  # a tombstone: the customer was erased (or merged away)
            segments.pop(record.key.decode(), None)
        else:
            doc = json.loads(record.value)
            segments[doc["customer_id"]] = {k: v for k, v in doc["segments"].items() if v}

    def change(record):
        c = json.loads(record.value)
        mine = segments.setdefault(c["customer_id"], {})
        if c["segment"] is None:
            mine.pop(c["segmentation"], None)
        else:
            mine[c["segmentation"]] = c["segment"]
        if not mine:
            del segments[c["customer_id"]]
        return c

    read_to_end(consumer, opts.memberships_topic, membership)
    read_to_end(consumer, opts.changes_topic, change)  # stays assigned, at the end
    if opts.once:
        print(json.dumps(segments, sort_keys=True))
        return
    print(f"caught up: {len(segments)} customers in segments; following changes")
    while True:
        for records in consumer.poll(timeout_ms=1000).values():
            for record in records:
                c = change(record)  # act here: add to / remove from the audience
                print(c["customer_id"], c["segmentation"], c["previous_segment"], "->",
                      c["segment"], f"({c['change_id']})")


if __name__ == "__main__":
    main()
