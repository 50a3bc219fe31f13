"""The embedded broker reports end offsets one batch short; the transport's probe corrects it."""

from __future__ import annotations

import asyncio

import aiokafka
import pytest
from faust.types import TP
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from stream_app.host.transport import probe_true_ends

pytestmark = pytest.mark.integration


async def _probe(bootstrap: str):
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [aiokafka.TopicPartition("probe", 0), aiokafka.TopicPartition("probe", 1)]
        reported = await consumer.end_offsets(tps)
        fixed = await probe_true_ends(consumer, {TP(tp.topic, tp.partition): off
                                                 for tp, off in reported.items()})
        return reported, fixed
    finally:
        await consumer.stop()



def test_probe_finds_the_true_end_of_each_partition(broker):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic("probe", 2, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50)
    for size in (10, 7, 5):  # three record batches
        for i in range(size):
            producer.send("probe", value=b"x%d" % i, partition=0)
        producer.flush()
    producer.send("probe", value=b"only", partition=1)
    producer.flush()
    producer.close()

    reported, fixed = asyncio.run(_probe(broker.bootstrap))
    assert fixed[TP("probe", 0)] == 22
    assert fixed[TP("probe", 1)] == 1
    # The broker's own answer is what the probe exists for (base offset of last batch + 1).
    assert reported[aiokafka.TopicPartition("probe", 0)] in (18, 22)
