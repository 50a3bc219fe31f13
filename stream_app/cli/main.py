"""The ``segmenter`` command."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from ..config import SettingsError, load_settings

cli = typer.Typer(
    name="segmenter",
    help="Streaming customer segmentation on Kafka: worker, embedded broker, demo and tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def settings_or_exit(**overrides: object):  # type: ignore[no-untyped-def]
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        console.print(f"[bold red]segmenter:[/] {exc}")
        raise typer.Exit(2) from None


@cli.command()
def worker() -> None:
    """Run a worker against SEGMENTER_BROKER_URL (scale out by starting more)."""
    from ..segmentation.rules import DefinitionsError
    from ..worker import run_worker

    settings = settings_or_exit()
    try:
        run_worker(settings)
    except DefinitionsError as exc:
        console.print(f"[bold red]segmenter:[/] SEGMENTER_SEGMENTS_FILE: {exc}")
        raise typer.Exit(2) from None


@cli.command()
def broker(
    port: int = typer.Option(9092, help="Loopback port to listen on (0: any free port)."),
) -> None:
    """Start the embedded Kafka-compatible broker (Tansu, in memory) and wait."""
    from ..kafka.broker import EmbeddedBroker

    b = EmbeddedBroker(port=port).start()
    print(f"embedded broker ready: SEGMENTER_BROKER_URL={b.url}", flush=True)
    console.print("[dim]memory only: everything is lost when it stops. Ctrl-C to stop.[/]")
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop and b._proc is not None and b._proc.poll() is None:
            time.sleep(0.2)
    finally:
        b.stop()


@cli.command()
def schemas(
    out: Path = typer.Option(Path("schemas"), help="Directory to write the JSON Schemas to."),
    check: bool = typer.Option(False, help="Fail if the files differ from the models."),
) -> None:
    """Generate the JSON Schema files in schemas/ from the pydantic models."""
    from ..schemas import generate

    docs = generate()
    stale = []
    out.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        path = out / name
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            console.print(f"wrote {path}")
    if stale:
        console.print(f"[red]out of date:[/] {', '.join(stale)} (run: segmenter schemas)")
        raise typer.Exit(1)


def main() -> None:
    # Never let a broken pipe (e.g. `segmenter tail | head`) print a traceback.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL) if hasattr(signal, "SIGPIPE") else None
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli(prog_name="segmenter")
    sys.exit(0)
