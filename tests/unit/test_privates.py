"""Tripwire for the private parts of other libraries the service relies on.

Every private member of faust, mode and aiokafka the host uses is in one module,
``stream_app/host/transport.py`` (River's, for snapshotting its models, in
``stream_app/core/segmentation/clustering/models.py``). The libraries are pinned exactly; an
upgrade that renames or reshapes one of these members must fail here, naming it, rather than
break delivery in production. The catalogue below is the list: a member the code starts to
use without adding it here fails :func:`test_no_library_private_is_used_outside_its_module`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "stream_app"
HOST = PACKAGE / "host" / "transport.py"
RIVER_HOST = PACKAGE / "core" / "segmentation" / "clustering" / "models.py"

# (where, member, what is relied on). ``where`` is "module:Class" or "module".
#  - a tuple of parameter names: a method with exactly these parameters
#  - "attr": an attribute the class (or a class it builds) assigns in its source
#  - "var": a module-level name
METHOD, ATTR, VAR = "method", "attr", "var"
FAUST_MODE_AIOKAFKA: list[tuple[str, str, Any]] = [
    # the consumer thread: fetch waits, true end offsets
    ("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread", "_create_worker_consumer",
     ("self", "transport")),
    ("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread", "_highwaters",
     ("self", "partitions")),
    ("faust.transport.drivers.aiokafka:AIOKafkaConsumerThread", "_consumer", ATTR),
    ("aiokafka.consumer.consumer:AIOKafkaConsumer", "_fetch_max_wait_ms", ATTR),
    ("aiokafka.consumer.consumer:AIOKafkaConsumer", "_fetcher", ATTR),
    ("aiokafka.consumer.fetcher:Fetcher", "_fetch_max_wait_ms", ATTR),
    ("faust.transport.consumer:Fetcher", "_stopped", ATTR),  # a mode Service
    # the consumer: batch delivery (Faust's drain loop, rewritten)
    ("faust.transport.drivers.aiokafka:Consumer", "_new_consumer_thread", ("self",)),
    ("faust.transport.consumer:Consumer", "_drain_messages", ("self", "fetcher")),
    ("faust.transport.consumer:Consumer", "_wait_next_records", ("self", "timeout")),
    ("faust.transport.consumer:Consumer", "_to_message", ("self", "tp", "record")),
    ("faust.transport.consumer:Consumer", "_add_gap", ("self", "tp", "offset_from", "offset_to")),
    ("faust.transport.consumer:Consumer", "perform_seek", ("self",)),
    ("faust.transport.consumer:Consumer", "_read_offset", ATTR),
    ("faust.transport.consumer:Consumer", "_committed_offset", ATTR),
    ("faust.transport.consumer:Consumer", "_n_acked", ATTR),
    ("faust.transport.consumer:Consumer", "_commit_every", ATTR),
    ("faust.transport.consumer:Consumer", "_buffered_partitions", ATTR),
    ("faust.transport.consumer:ThreadDelegateConsumer", "_thread", ATTR),
    ("mode.services:Service", "_stopped", ATTR),
    # outputs sent as record batches, at once
    ("faust.transport.drivers.aiokafka:Producer", "_ensure_producer", ("self",)),
    ("aiokafka.producer.producer:AIOKafkaProducer", "_message_accumulator", ATTR),
    ("aiokafka.producer.message_accumulator:MessageAccumulator", "_batches", ATTR),
    ("aiokafka.producer.message_accumulator:MessageAccumulator", "_waiter_future", ATTR),
    ("aiokafka.producer.message_accumulator:MessageBatch", "_builder", ATTR),
    ("aiokafka.producer.message_accumulator:BatchBuilder", "close", ("self",)),
    # table writes per partition
    ("faust.streams", "_current_event", VAR),
    # bounded shutdown
    ("mode.worker:Worker", "_on_sigint", ("self",)),
    ("mode.worker:Worker", "_on_sigterm", ("self",)),
]
RIVER: list[tuple[str, str, Any]] = [
    ("river.cluster.streamkmeans:STREAMKMeans", "_kmeans", ATTR),
    ("river.cluster.streamkmeans:STREAMKMeans", "_temp_chunk", ATTR),
    ("river.cluster.dbstream:DBSTREAM", "_time_stamp", ATTR),
    ("river.cluster.dbstream:DBSTREAM", "_micro_clusters", ATTR),
    ("river.cluster.denstream:DenStream", "_n_samples_seen", ATTR),
    ("river.cluster.denstream:DenStream", "_init_buffer", ATTR),
]
# names that look private but are public API (namedtuple's) or the standard library's
NOT_LIBRARY_PRIVATES = {"_asdict", "_fields", "_replace", "_exit", "_Decompress"}


def _resolve(where: str) -> Any:
    module, _, cls = where.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, cls) if cls else obj


def _assigned_in(cls: type, attr: str) -> bool:
    """``self.<attr>`` (or ``self.<attr>:``) is assigned in the source of the class or of a
    class it derives from."""
    pattern = re.compile(rf"self\.{re.escape(attr)}\s*(:[^=]*)?=[^=]")
    for klass in inspect.getmro(cls):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if pattern.search(source):
            return True
    return False


@pytest.mark.parametrize(("where", "member", "expected"), FAUST_MODE_AIOKAFKA + RIVER,
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_relied_on_private_member_is_still_there(where: str, member: str,
                                                       expected: Any) -> None:
    obj = _resolve(where)
    if expected == VAR:
        assert hasattr(obj, member), f"{where}.{member} is gone: see {HOST.name}"
    elif expected == ATTR:
        assert _assigned_in(obj, member), (
            f"{where} no longer assigns self.{member}: the host relies on it "
            f"(stream_app/host/transport.py / clustering/models.py); check what replaced it")
    else:
        fn = inspect.getattr_static(obj, member, None)
        assert fn is not None, f"{where}.{member} is gone: the host overrides or calls it"
        fn = getattr(fn, "__func__", fn)
        params = tuple(inspect.signature(fn).parameters)
        assert params == expected, (
            f"{where}.{member} now takes {params}, the host relies on {expected}")


def _pins() -> dict[str, str]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    out = {}
    for dep in doc["project"]["dependencies"]:
        name, sep, version = dep.partition("==")
        if sep:
            out[name.strip()] = version.strip()
    return out


@pytest.mark.parametrize("dist", ["faust-streaming", "mode-streaming", "aiokafka", "river"])
def test_the_libraries_whose_privates_are_used_are_pinned_and_installed_as_pinned(
        dist: str) -> None:
    pins = _pins()
    assert dist in pins, f"{dist} must be pinned exactly (==) in pyproject.toml"
    assert importlib.metadata.version(dist) == pins[dist], (
        f"{dist} {importlib.metadata.version(dist)} installed, {pins[dist]} pinned: "
        "run this test module after the upgrade and update the catalogue")


def _private_accesses(path: Path) -> Iterator[tuple[str, int]]:
    """Attribute names read or written on an object other than ``self`` / ``cls`` (our own
    classes' members are theirs), names imported, methods defined (an override of a
    library's private method), and names reached through ``getattr(x, "_name")``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                yield node.attr, node.lineno
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                yield alias.name, node.lineno
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            yield node.args[1].value, node.lineno
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.lineno  # an override of a library's private method


def _own_names() -> set[str]:
    """Everything our own code defines: functions, classes, attributes set on self/cls,
    module and class names."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_library_private_is_used_outside_its_module() -> None:
    catalogued = {m for _, m, _ in FAUST_MODE_AIOKAFKA}
    river = {m for _, m, _ in RIVER}
    own = _own_names() - catalogued - river
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT)
        for name, line in _private_accesses(path):
            if not _is_private(name):
                continue
            if name in catalogued and path != HOST:
                problems.append(f"{rel}:{line}: {name} (faust/mode/aiokafka: only in "
                                f"{HOST.relative_to(ROOT)})")
            elif name in river and path != RIVER_HOST:
                problems.append(f"{rel}:{line}: {name} (River: only in "
                                f"{RIVER_HOST.relative_to(ROOT)})")
            elif (name not in own and name not in catalogued and name not in river
                  and name not in NOT_LIBRARY_PRIVATES):
                problems.append(f"{rel}:{line}: {name} is a library's private member missing "
                                "from the catalogue in tests/unit/test_privates.py")
    assert not problems, "\n".join(problems)


def test_the_scan_finds_a_private_use_outside_the_host(tmp_path: Path) -> None:
    """The scan above is not vacuous: the same accesses written elsewhere are reported."""
    sample = tmp_path / "elsewhere.py"
    sample.write_text("def f(app, c):\n"
                      "    app.producer._ensure_producer()\n"
                      "    return getattr(c, '_committed_offset', None)\n")
    found = {name for name, _ in _private_accesses(sample)}
    assert {"_ensure_producer", "_committed_offset"} <= found
