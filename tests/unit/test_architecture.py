"""Architecture rules (import-linter contracts in pyproject.toml, ``[tool.importlinter]``).

- ``stream_app.core`` (events, state, segmentation, predictive, routing, processing, pipeline)
  imports nothing of faust, mode, aiokafka or kafka-python, nor the host, web, CLI or collector;
- layers point down: cli > host.worker > host.app > web / host.modeling / host.redefinition >
  host.worker_view > host.transport > host.batching > core;
- no import cycles between the modules and packages of ``stream_app``.

Private members of faust / mode / aiokafka: tests/unit/test_privates.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    # the checked tree's own package first on the path: grimp imports it to find its files
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from importlinter.cli import lint_imports; sys.exit(lint_imports())")
    return subprocess.run([sys.executable, "-c", code, str(root)], cwd=root,
                          capture_output=True, text=True, timeout=120)


def test_the_import_contracts_are_kept() -> None:
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "3 kept, 0 broken" in run.stdout


def test_a_core_module_importing_faust_breaks_the_contract(tmp_path: Path) -> None:
    """The contracts are not vacuous: the same tree with one Faust import in the core, and
    one upward import from the core into the host, fails, naming both."""
    shutil.copytree(ROOT / "stream_app", tmp_path / "stream_app",
                    ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    core = tmp_path / "stream_app" / "core" / "state" / "customer.py"
    core.write_text(core.read_text() + "\nimport faust  # noqa\nfrom ...host import app  # noqa\n")
    run = _lint(tmp_path)
    assert run.returncode != 0
    assert "stream_app.core.state.customer -> faust" in run.stdout
    assert "stream_app.core.state.customer -> stream_app.host.app" in run.stdout


def test_views_modeling_and_definitions_see_the_worker_through_its_interface() -> None:
    """web/, modeling.py and redefinition.py name no host module, not even for type checking:
    they see a worker through ``worker_view`` (WorkerView, WorkerHost)."""
    users = [*sorted((ROOT / "stream_app" / "web").glob("*.py")),
             ROOT / "stream_app" / "host" / "modeling.py",
             ROOT / "stream_app" / "host" / "redefinition.py"]
    for path in users:
        text = path.read_text()
        for host in ("from ..host.app import", "from .app import", "stream_app.host.app import",
                     "import Runtime"):
            assert host not in text, f"{path.relative_to(ROOT)}: {host}"


def test_the_worker_has_every_member_of_the_interfaces(tmp_path: Path) -> None:
    """Runtime implements WorkerHost (so WorkerView): every declared attribute and method is
    there on a worker built from settings."""
    import inspect

    from stream_app.config import load_settings
    from stream_app.core.segmentation.registry import build_segmentations
    from stream_app.host.app import Runtime
    from stream_app.host.worker_view import WorkerHost, WorkerView

    s = load_settings(data_dir=tmp_path, clustering=True)
    rt = Runtime(s, build_segmentations(s))
    declared: set[str] = set()
    for proto in (WorkerView, WorkerHost):
        declared |= set(proto.__annotations__)
        declared |= {name for name, _ in inspect.getmembers(proto)
                     if not name.startswith("_")}
    assert {"settings", "customer", "sweep", "pipeline", "assigned"} <= declared
    missing = sorted(name for name in declared if not hasattr(rt, name))
    assert not missing, missing
