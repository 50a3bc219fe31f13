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

from ..config import SettingsError
from .common import console, settings_or_exit

cli = typer.Typer(
    name="segmenter",
    help="Streaming customer segmentation on Kafka: worker, embedded broker, demo and tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@cli.command()
def worker() -> None:
    """Run a worker against SEGMENTER_BROKER_URL (scale out by starting more)."""
    from rich.markup import escape

    from ..core.segmentation.rules import DefinitionsError
    from ..host.clients import BrokerUnreachable, TopicMismatch
    from ..host.worker import run_worker

    settings = settings_or_exit()
    try:
        run_worker(settings)
    except DefinitionsError as exc:
        console.print(f"[bold red]segmenter:[/] SEGMENTER_SEGMENTS_FILE: {escape(str(exc))}")
        raise typer.Exit(2) from None
    except (BrokerUnreachable, TopicMismatch) as exc:
        console.print(f"[bold red]segmenter:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None


@cli.command()
def collect() -> None:
    """Serve the Segment / RudderStack HTTP Tracking API on SEGMENTER_COLLECTOR_PORT and
    produce the events to the input topic (docs/collector.md)."""
    from rich.markup import escape

    from ..collector.server import run_collector
    from ..collector.settings import load_collector_settings
    from ..host.clients import BrokerUnreachable

    try:
        settings = load_collector_settings()
    except SettingsError as exc:
        console.print(f"[bold red]segmenter:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    try:
        run_collector(settings)
    except BrokerUnreachable as exc:
        console.print(f"[bold red]segmenter:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except OSError as exc:  # the port is taken, the address is not this host's
        console.print(f"[bold red]segmenter:[/] cannot listen on {settings.collector_host}:"
                      f"{settings.collector_port} (SEGMENTER_COLLECTOR_HOST, "
                      f"SEGMENTER_COLLECTOR_PORT): {escape(str(exc))}")
        raise typer.Exit(2) from None


@cli.command()
def broker(
    port: int = typer.Option(9092, help="Loopback port to listen on (0: any free port)."),
) -> None:
    """Start the embedded Kafka-compatible broker (Tansu, in memory) and wait."""
    from ..host.broker import EmbeddedBroker

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


@cli.command()
def demo(
    customers: int = typer.Option(2000, min=1, max=1_000_000, help="Simulated customers."),
    days: float = typer.Option(120.0, min=1, help="Days of history the traffic covers."),
    rate: float = typer.Option(3000.0, min=1, help="Events per second to publish."),
    duration: float = typer.Option(0.0, min=0, help="Stop after this many seconds (0: Ctrl-C)."),
) -> None:
    """Broker (embedded unless SEGMENTER_BROKER_URL is set), a worker and live persona traffic."""
    from .demo import Demo

    settings = settings_or_exit()
    code = Demo(settings, customers, days, rate, duration or None, console).run()
    raise typer.Exit(code)


@cli.command()
def simulate(
    customers: int = typer.Option(1000, min=1, max=10_000_000, help="Simulated customers."),
    days: float = typer.Option(90.0, min=0.01, help="Days of event time the traffic covers."),
    rate: float = typer.Option(0.0, min=0, help="Events per second (0: as fast as possible)."),
    duration: float = typer.Option(0.0, min=0, help="Stop publishing after this many seconds."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same traffic."),
    out: Path = typer.Option(None, help="Write JSON lines here instead of publishing."),
    truth: Path = typer.Option(None, help="Write ground-truth personas (JSON) here."),
) -> None:
    """Publish realistic persona traffic (ground-truth labels written beside it)."""
    from datetime import UTC, datetime, timedelta

    import orjson
    from rich.progress import Progress

    from ..simulate import simulate as plan
    from .publish import paced, producer_for, publish

    start = datetime.now(UTC) - timedelta(days=days)
    sim = plan(customers=customers, days=days, seed=seed, start=start)
    if truth:
        truth.write_text(json.dumps(dict(sim.ground_truth), indent=1, sort_keys=True))
        console.print(f"ground truth for {len(sim.ground_truth):,} customers -> {truth}")
    deadline = time.monotonic() + duration if duration else None

    def stop() -> bool:
        return deadline is not None and time.monotonic() > deadline

    with Progress(console=console, transient=False) as progress:
        task = progress.add_task("events", total=None)
        if out:
            n = 0
            with out.open("wb") as fh:
                for event in paced(iter(sim), rate or None):
                    if stop():
                        break
                    fh.write(orjson.dumps(event) + b"\n")
                    n += 1
                    if n % 1000 == 0:
                        progress.update(task, advance=1000)
            progress.update(task, completed=n)
            console.print(f"wrote {n:,} events to {out}")
            return
        settings = settings_or_exit()
        producer = producer_for(settings)
        try:
            n = publish(producer, settings.input_topic, iter(sim), rate=rate or None,
                        on_sent=lambda k: progress.update(task, advance=k), stop=stop)
        finally:
            producer.close(timeout=10)
    console.print(f"published {n:,} events to {settings.input_topic}")


@cli.command()
def replay(
    file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                help="JSON lines of spec events, or a CSV of transactions."),
    mapping: str = typer.Option(None, help="CSV column mapping, e.g. "
                                "'customer=cust_id,timestamp=ts,amount=total,category=cat'."),
    rate: float = typer.Option(0.0, min=0, help="Events per second (0: as fast as possible)."),
) -> None:
    """Publish history to the input topic; event time comes from the data."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from .. import replay as rp
    from .publish import producer_for, publish

    settings = settings_or_exit()
    try:
        fmt = rp.file_format(file)
        rp.parse_mapping(mapping) if fmt.startswith("csv") else None
    except ValueError as exc:
        console.print(f"[red]segmenter replay:[/] {exc}")
        raise typer.Exit(2) from None
    size = file.stat().st_size
    producer = producer_for(settings)
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.fields[events]:,} events"), TimeRemainingColumn(),
                      console=console) as progress:
            task = progress.add_task(file.name, total=size, events=0)
            with file.open("rb") as raw:
                events = rp.read_events(file, mapping)
                counter = {"n": 0}

                def advance(k: int) -> None:
                    counter["n"] += k
                    progress.update(task, completed=min(size, raw.tell() or size),
                                    events=counter["n"])

                try:
                    n = publish(producer, settings.input_topic, events, rate=rate or None,
                                on_sent=advance)
                except rp.ReplayError as exc:
                    console.print(f"[red]segmenter replay:[/] {exc}")
                    raise typer.Exit(1) from None
                progress.update(task, completed=size, events=n)
    finally:
        producer.close(timeout=10)
    console.print(f"replayed {n:,} events from {file} to {settings.input_topic}")


@cli.command()
def tail(
    segmentation: str = typer.Option(None, help="Only changes of this segmentation."),
    from_beginning: bool = typer.Option(False, help="Start at the oldest retained change."),
    json_out: bool = typer.Option(False, "--json", help="Print raw JSON lines."),
) -> None:
    """Follow segment changes in readable form (Ctrl-C to stop)."""
    import orjson
    from kafka import KafkaConsumer

    from ..host.clients import kafka_python_config

    settings = settings_or_exit()
    consumer = KafkaConsumer(settings.changes_topic, group_id=None,
                             auto_offset_reset="earliest" if from_beginning else "latest",
                             **kafka_python_config(settings))
    out = Console()
    try:
        for record in consumer:
            change = orjson.loads(record.value)
            if segmentation and change.get("segmentation") != segmentation:
                continue
            if json_out:
                print(record.value.decode(), flush=True)
                continue
            out.print(f"[dim]{change['occurred_at']}[/] [bold]{change['customer_id']}[/] "
                      f"{change['segmentation']}: {change.get('previous_segment') or '-'} -> "
                      f"[green]{change.get('segment_name') or change.get('segment') or '-'}[/]"
                      f" [dim]({change.get('reason', '')})[/]")
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


@cli.command()
def segments(
    url: str = typer.Option(None, help="A worker's base URL (default: 127.0.0.1 and "
                            "SEGMENTER_WEB_PORT)."),
    json_out: bool = typer.Option(False, "--json", help="Print the raw JSON."),
) -> None:
    """Segment profiles and live sizes as tables (from a running worker)."""
    import httpx
    from rich.table import Table

    settings = settings_or_exit()
    base = url or f"http://127.0.0.1:{settings.web_port}"
    try:
        doc = httpx.get(base.rstrip("/") + "/segments", timeout=10).json()
    except httpx.HTTPError as exc:
        console.print(f"[red]segmenter segments:[/] no worker at {base}: {exc}")
        raise typer.Exit(1) from None
    if json_out:
        print(json.dumps(doc, indent=2))
        return
    out = Console()
    for seg in doc.get("segmentations", []):
        table = Table(title=f"{seg['name']}: {seg.get('customers', 0):,} customers",
                      title_justify="left")
        table.add_column("segment")
        table.add_column("name")
        table.add_column("customers", justify="right")
        table.add_column("share", justify="right")
        table.add_column("profile / rule", overflow="fold")
        for item in seg.get("segments", []):
            profile = item.get("profile") or item.get("when") or ""
            if isinstance(profile, dict):
                profile = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in list(profile.items())[:6])
            table.add_row(str(item.get("id")), str(item.get("name") or ""),
                          f"{item.get('size', 0):,}", f"{item.get('share', 0):.1%}",
                          str(profile))
        out.print(table)


@cli.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                               "help_option_names": []})
def bench(ctx: typer.Context) -> None:
    """Throughput, latency, memory and scale-out on the embedded broker (bench/throughput.py;
    options: segmenter bench --help)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "throughput.py"
    if not path.is_file():
        console.print("[red]segmenter bench:[/] needs a source checkout (bench/throughput.py)")
        raise typer.Exit(2)
    spec = importlib.util.spec_from_file_location("segmenter_bench_throughput", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    raise typer.Exit(module.main(list(ctx.args)))


def _register_evaluate() -> None:
    from .evaluate import evaluate

    cli.command("evaluate")(evaluate)


_register_evaluate()


def _register_members() -> None:
    from .members import members

    cli.command("members")(members)


_register_members()


def main() -> None:
    # Never let a broken pipe (e.g. `segmenter tail | head`) print a traceback.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL) if hasattr(signal, "SIGPIPE") else None
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli(prog_name="segmenter")
    sys.exit(0)
