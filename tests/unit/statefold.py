"""Pure folds of interactions into a customer state, for tests: the pipeline itself updates
states in place (:func:`stream_app.core.state.customer.apply_in_place`) on the copy its batch owns."""

from __future__ import annotations

from stream_app.core.events.interaction import Interaction
from stream_app.core.state.customer import (
    CustomerState,
    StateConfig,
    apply_in_place,
    message_digest,
    new_state,
)


def apply(state: CustomerState | None, rec: Interaction, cfg: StateConfig = StateConfig()
          ) -> CustomerState:
    """Pure: return the state after ``rec``; ``state`` is not modified."""
    out = new_state(rec) if state is None else state.copy()
    apply_in_place(out, rec, cfg)
    return out


def apply_many(state: CustomerState | None, recs: list[Interaction],
               cfg: StateConfig = StateConfig()) -> tuple[CustomerState | None, int]:
    """Pure: fold ``recs`` into a copy of ``state``; returns (state, how many were applied)."""
    out: CustomerState | None = None if state is None else state.copy()
    applied = 0
    for rec in recs:
        if out is None:
            out = new_state(rec)
        applied += apply_in_place(out, rec, cfg)
    return out, applied


def is_duplicate(state: CustomerState, message_id: str) -> bool:
    return message_digest(message_id) in state.seen
