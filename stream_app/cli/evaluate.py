"""``segmenter evaluate FILE``: one's own history through the pure pipeline, without Kafka.

The same path as ``segmenter replay`` + a worker (``stream_app.evaluation``), then what a data
team asks before trusting the behavioural segments: profiles, agreement with batch k-means,
id churn, stability between model versions, changes per customer per day, run time.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table


def evaluate(
    file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                help="JSON lines of spec events, or a CSV of transactions."),
    mapping: str = typer.Option(None, help="CSV column mapping, as for `segmenter replay`, "
                                "e.g. 'customer=cust_id,timestamp=ts,amount=total'."),
    tick_hours: float = typer.Option(24.0, min=0.01, help="Event time between "
                                     "re-evaluations of every customer (the worker's tick)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Replay a history through the pipeline without Kafka and report on its segments."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .. import replay as rp
    from ..evaluation import Evaluation, EvaluationSettings, trainer_settings
    from .common import console, settings_or_exit

    settings = settings_or_exit()
    try:
        fmt = rp.file_format(file)
        events = rp.read_events(file, mapping)
    except ValueError as exc:
        console.print(f"[red]segmenter evaluate:[/] {exc}")
        raise typer.Exit(2) from None
    total = _lines(file) - (1 if fmt == "csv" else 0)
    ev = Evaluation(EvaluationSettings(trainer=trainer_settings(settings),
                                       min_learned=settings.model_min_learned,
                                       tick_s=tick_hours * 3600.0))
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed:,}/{task.total:,} events"), TimeElapsedColumn(),
                  console=console, transient=as_json) as progress:
        task = progress.add_task(file.name, total=max(total, 1))
        try:
            ev.feed(events, progress=lambda n: progress.update(task, completed=n))
        except rp.ReplayError as exc:
            console.print(f"[red]segmenter evaluate:[/] {exc}")
            raise typer.Exit(1) from None
        result = ev.finish()
        progress.update(task, completed=result.events)
    doc = summary(result, ev.dead_letters, settings.cluster_model.value)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        print_summary(doc, Console())


def _lines(path: Path) -> int:
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d") if ts else "-"


def summary(r: Any, dead_letters: int, model: str) -> dict[str, Any]:
    """The figures of an evaluation as a JSON-safe document."""
    stable, served = r.stability(), r.served_stability()
    quarters = r.new_ids_per_quarter()
    return {
        "events": r.events, "customers": r.customers, "dead_letters": dead_letters,
        "first_event": _day(r.start), "last_event": _day(r.end),
        "days": round((r.end - r.start) / 86400.0, 1), "run_s": round(r.run_s, 2),
        "model": model, "versions": len(r.versions),
        "segments": [{**s, "share": round(s["members"] / max(len(r.members), 1), 4)}
                     for s in r.segments],
        "assigned": len(r.members),
        "ari_batch_kmeans": _round(r.ari_batch), "ari_rfm_kmeans": _round(r.ari_rfm),
        "new_ids_per_quarter": quarters,
        "stability": _stability(stable),
        "stability_served": _stability(served),
        "changes_per_customer_day": _round(r.changes_per_customer_day, 4),
        "first_ready_model": _day(r.first_ready_at) if r.first_ready_at else None,
        "unassigned_after_first_ready_model": r.unassigned_after_first_ready,
    }


def _stability(shares: list[float]) -> dict[str, Any]:
    return {"mean": _round(sum(shares) / len(shares)) if shares else None,
            "worst": _round(min(shares)) if shares else None,
            "versions_below_95": sum(1 for s in shares if s < 0.95),
            "versions_measured": len(shares)}


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def print_summary(doc: dict[str, Any], out: Console) -> None:
    out.print(f"[bold]{doc['events']:,} events[/], {doc['customers']:,} customers, "
              f"{doc['first_event']} to {doc['last_event']} ({doc['days']} days); "
              f"{doc['dead_letters']:,} rejected; run {doc['run_s']:.1f} s")
    out.print(f"model {doc['model']}: {doc['versions']} versions, "
              f"{doc['assigned']:,} customers in {len(doc['segments'])} segments")
    table = Table(title="Behavioural segments (final model)", title_justify="left")
    for col in ("id", "name", "customers", "share", "spend/mo", "orders/mo", "AOV",
                "days since order", "views/mo", "e-mail opens/mo"):
        table.add_column(col, justify="left" if col in ("id", "name") else "right")
    for s in doc["segments"]:
        t = s["typical"]
        last = t.get("days_since_last_order")
        table.add_row(s["id"], s["name"], f"{s['members']:,}", f"{s['share']:.0%}",
                      f"{t['spend_per_month']:.2f}", f"{t['orders_per_month']:.2f}",
                      f"{t['avg_order_value']:.2f}", "never" if last is None else f"{last:.0f}",
                      f"{t['product_views_per_month']:.1f}", f"{t['email_opens_per_month']:.1f}")
    out.print(table)
    st, sv = doc["stability"], doc["stability_served"]
    rows = [
        ("ARI vs batch k-means, same features and k", _fmt(doc["ari_batch_kmeans"])),
        ("ARI vs batch k-means on RFM, same k", _fmt(doc["ari_rfm_kmeans"])),
        ("new segment ids per quarter", " ".join(str(n) for n in doc["new_ids_per_quarter"])),
        ("kept across versions, served (mean / worst)",
         f"{_pct(sv['mean'])} / {_pct(sv['worst'])}, {sv['versions_below_95']} of "
         f"{sv['versions_measured']} versions below 95 %"),
        ("nearest id kept, raw (mean / worst)",
         f"{_pct(st['mean'])} / {_pct(st['worst'])}, {st['versions_below_95']} of "
         f"{st['versions_measured']} versions below 95 %"),
        ("segment changes per customer per day", _fmt(doc["changes_per_customer_day"], 4)),
        ("first ready model", f"{doc['first_ready_model'] or 'none'}; "
         f"{doc['unassigned_after_first_ready_model']:,} customers without a segment after it"),
    ]
    figures = Table(title="Figures", title_justify="left", show_header=False)
    figures.add_column()
    figures.add_column(justify="right")
    for name, value in rows:
        figures.add_row(name, value)
    out.print(figures)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
