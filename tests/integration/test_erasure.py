"""GDPR erasure through the admin endpoint, end to end, and secrets kept out of the logs.

``DELETE /admin/customers/{id}`` with the bearer token: the customer leaves every segment
(changes to null), its state is deleted (a tombstone in the changelog), the link of its
anonymous id is removed (an erasure marker in its place), ``/customers/{id}`` answers
404, and later events for the id, or for its old anonymous id, start new customers.
"""

from __future__ import annotations

import httpx
import orjson
import pytest

from stream_app.core.events.interaction import ANON_PREFIX
from stream_app.core.state import codec
from stream_app.core.state.customer import Erased, Link

from .conftest import read_topic, send, wait_for
from .equivalence import final_table

pytestmark = pytest.mark.integration

TOKEN = "admin-token-7f3a9c-never-logged"
SASL_SECRET = "sasl-password-b81e-never-logged"
USER, ANON = "gdpr-user", "gdpr-anon"


def event(kind: str, mid: str, ts: str, **fields):
    doc = {"type": "track", "event": kind, "messageId": mid, "timestamp": ts, **fields}
    if kind == "identify":
        doc["type"] = "identify"
        del doc["event"]
    return doc


def test_erasure_through_the_admin_endpoint(broker, worker_factory, producer):
    # log_level debug: everything a worker logs, none of it may carry a secret. The SASL
    # password is set but unused (PLAINTEXT): a configured secret must not leak either.
    worker = worker_factory(admin_token=TOKEN, sasl_password=SASL_SECRET, log_level="debug",
                            tick_interval_s="3600").start()
    for i in range(3):
        send(producer, event("Product Viewed", f"av-{i}", f"2026-10-0{i + 1}T10:00:00Z",
                             anonymousId=ANON, properties={"category": "shoes"}), key=ANON.encode())
    send(producer, event("identify", "id-1", "2026-10-04T10:00:00Z", userId=USER,
                         anonymousId=ANON, traits={"age": 34, "country": "DE",
                                                   "email": "gdpr@example.org"}),
         key=USER.encode())
    for i in range(3):
        send(producer, event("Order Completed", f"o-{i}", f"2026-10-0{i + 5}T10:00:00Z",
                             userId=USER, properties={"total": 250.0, "currency": "EUR"}),
             key=USER.encode())
    producer.flush()
    before = wait_for(lambda: (r := worker.get(f"/customers/{USER}")).status_code == 200
                      and r.json()["events"] == 7 and r.json()["anonymous_ids"] == [ANON]
                      and r.json(), what="the customer with its anonymous history")
    member_of = {seg: v["segment"] for seg, v in before["segments"].items() if v["segment"]}
    assert {"rfm", "age_band", "geographic"} <= set(member_of), member_of
    app = worker.env["SEGMENTER_APP_ID"]
    link = codec.loads(final_table(broker, app, "customers")[ANON_PREFIX + ANON])
    assert type(link) is Link and link.target == USER

    url = f"{worker.base_url}/admin/customers/{USER}"
    r = httpx.delete(url, timeout=10)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    r = httpx.delete(url, headers={"Authorization": "Bearer not-the-token"}, timeout=10)
    assert r.status_code == 403 and TOKEN not in r.text
    assert httpx.delete(url, headers={"Authorization": f"Basic {TOKEN}"},
                        timeout=10).status_code == 401
    r = httpx.delete(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 202 and r.json()["customer_id"] == USER, r.text

    wait_for(lambda: worker.get(f"/customers/{USER}").status_code == 404, what="404 after erasure")
    exits = wait_for(lambda: {c["segmentation"]: c for c in map(
        lambda rec: orjson.loads(rec.value), read_topic(broker, "segment-changes", expect=1))
        if c["customer_id"] == USER and c["segment"] is None} or None, what="exit changes")
    assert set(exits) == set(member_of)
    for seg, change in exits.items():
        assert change["previous_segment"] == member_of[seg]
        assert change["reason"] == "erased on request"
    def markers():
        table = final_table(broker, app, "customers")
        entries = [codec.loads(table[k]) for k in (USER, ANON_PREFIX + ANON) if table.get(k)]
        return len(entries) == 2 and all(type(e) is Erased for e in entries)

    wait_for(markers, what="erasure markers (no data) for the customer and its anonymous id")
    assert b"gdpr@example.org" not in final_table(broker, app, "customers")[USER]

    # Later events start fresh: the user has only the new event, and the old anonymous id is
    # a customer of its own again (not forwarded to the erased user).
    send(producer, event("Order Completed", "o-new", "2026-10-20T10:00:00Z", userId=USER,
                         properties={"total": 20.0, "currency": "EUR"}), key=USER.encode())
    send(producer, event("Product Viewed", "av-new", "2026-10-20T11:00:00Z", anonymousId=ANON,
                         properties={"category": "tents"}), key=ANON.encode())
    producer.flush()
    fresh = wait_for(lambda: (r := worker.get(f"/customers/{USER}")).status_code == 200
                     and r.json(), what="the user again")
    assert fresh["events"] == 1 and fresh["features"]["orders"] == 1 and fresh["traits"] == {}
    assert fresh["anonymous_ids"] == []
    anon = wait_for(lambda: (r := worker.get(f"/customers/{ANON_PREFIX}{ANON}")).status_code == 200
                    and r.json(), what="the anonymous id as its own customer")
    assert anon["events"] == 1 and anon["anonymous"] is True

    log = worker.log_path.read_text(errors="replace")
    assert "erasure" in log  # the request is logged, by its id ...
    assert TOKEN not in log and SASL_SECRET not in log  # ... and no secret ever is
    for path in ("/health", f"/customers/{USER}", "/metrics", "/segments"):
        body = worker.get(path).text
        assert TOKEN not in body and SASL_SECRET not in body, path
