"""``segmenter collect``: the Segment / RudderStack HTTP Tracking API in front of Kafka.

A stateless process (run as many as you like behind a load balancer). Each request's events
are checked by the worker's own parser (:func:`stream_app.core.events.parse.decode`), corrected for
client clock skew as Segment does, and produced to the input topic keyed by ``userId`` else
``anonymousId``; the answer is sent once Kafka has acknowledged every record (``acks=all``).

- :mod:`.settings`: the collector's settings (the service's, plus port, bind address, keys).
- :mod:`.body`: the request body, read and gunzipped within a size bound.
- :mod:`.intake`: pure: authentication, one request's events -> Kafka records or rejections.
- :mod:`.sink`: the Kafka producer, broker availability and dead letters.
- :mod:`.server`: the aiohttp application and the process around it.
"""
