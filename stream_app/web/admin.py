"""Admin endpoints, behind a bearer token (``SEGMENTER_ADMIN_TOKEN``; unset: not served).

``DELETE /admin/customers/{id}`` erases a customer (GDPR art. 17): it publishes an erase
operation to the routed topic at the customer's partition, the same path events take, so the
owner of the partition applies it in order with the customer's events: the customer leaves
every segment (changes to null), its state is deleted (a tombstone in the changelog), the
links of its anonymous ids are removed, and later events start a new customer. The answer is
``202 Accepted`` once the broker has the request.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from faust.web import Request, Response, View

from ..core import routing
from .access import Gate

if TYPE_CHECKING:
    from ..host.worker_view import WorkerHost

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 512


def register_admin(rt: WorkerHost) -> None:
    token = rt.settings.admin_token
    if token is None or not token.get_secret_value():
        log.info("admin endpoints off (SEGMENTER_ADMIN_TOKEN is not set)")
        return
    denied = Gate(token, setting="SEGMENTER_ADMIN_TOKEN", realm="segmenter-admin",
                  loopback_without_token=False).check

    @rt.app.page("/admin/customers/{customer_id}")
    class Customer(View):
        async def delete(self, request: Request, customer_id: str) -> Response:
            refused = denied(self, request)
            if refused is not None:
                return refused
            if not customer_id or len(customer_id) > MAX_ID_LENGTH:
                return self.json({"error": "invalid customer id"}, status=400)
            request_id = f"erase-{uuid.uuid4().hex}"
            partition = routing.partition_of(customer_id, rt.settings.partitions)
            sent = await rt.routed_topic.send(
                key=customer_id.encode(), value=routing.erase_op(customer_id, request_id),
                partition=partition, force=True)
            await sent  # acknowledged by the broker before we say so
            log.info("erasure %s requested (partition %d)", request_id, partition)
            return self.json({"status": "accepted", "request_id": request_id,
                              "customer_id": customer_id, "partition": partition}, status=202)
