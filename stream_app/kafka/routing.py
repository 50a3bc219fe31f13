"""Moved to :mod:`stream_app.routing` (the core: which partition owns a customer, and the
routed operations); this name stays only until every import has moved."""

from ..routing import *  # noqa: F403
from ..routing import MAX_PATH, OP_ABSORB, OP_ERASE, OP_EVENT, OP_MERGE, OP_UNLINK  # noqa: F401
