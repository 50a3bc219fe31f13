"""``segmenter members SEGMENTATION SEGMENT``: export a segment's customer ids, paging a
worker's ``/segments/{segmentation}/{segment}/members`` (which asks every worker)."""

from __future__ import annotations

import csv
import json
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import typer
from rich.console import Console

PAGE = 1000  # the endpoint's largest page
RETRIES = 5  # a page answered 503 (a rebalance) is asked again, with the same cursor


class Format(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


def file_format(out: Path | None, given: Format | None) -> Format:
    if given is not None:
        return given
    if out is not None and out.suffix.lower() == ".csv":
        return Format.csv
    return Format.jsonl  # .jsonl, .json, .ndjson, stdout


def members(
    segmentation: str = typer.Argument(..., help="e.g. rfm, lifecycle, behavior"),
    segment: str = typer.Argument(..., help="A segment id of it, e.g. champions"),
    out: Path = typer.Option(None, "--out", "-o", dir_okay=False,
                             help="Write here (default: standard output); .csv: CSV, "
                             "else JSON lines."),
    fmt: Format = typer.Option(None, "--format", help="jsonl or csv (default: by the "
                               "extension of --out)."),
    url: str = typer.Option(None, help="A worker's base URL (default: 127.0.0.1 and "
                            "SEGMENTER_WEB_PORT)."),
    page_size: int = typer.Option(PAGE, min=1, max=PAGE, help="Ids asked for per request."),
) -> None:
    """Export the customer ids of a segment (all workers) as JSON lines or CSV, with a
    progress bar. Sends SEGMENTER_API_TOKEN as the bearer token when it is set."""
    import httpx
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .common import console, settings_or_exit

    settings = settings_or_exit()
    base = (url or f"http://127.0.0.1:{settings.web_port}").rstrip("/")
    headers = {}
    if settings.api_token is not None:
        headers["Authorization"] = f"Bearer {settings.api_token.get_secret_value()}"
    kind = file_format(out, fmt)
    client = httpx.Client(base_url=base, headers=headers, timeout=30)
    total = _size(client, segmentation, segment)
    path = f"/segments/{quote(segmentation, safe='')}/{quote(segment, safe='')}/members"
    try:
        sink: IO[str] = out.open("w", newline="") if out is not None else sys.stdout
    except OSError as exc:
        client.close()
        console.print(f"[red]segmenter members:[/] cannot write {out}: {exc.strerror}")
        raise typer.Exit(2) from None
    written = 0
    try:
        writer = csv.writer(sink) if kind is Format.csv else None
        if writer is not None:
            writer.writerow(["customer_id"])
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      MofNCompleteColumn(), console=console,
                      transient=out is None) as progress:
            task = progress.add_task(f"{segmentation}/{segment}", total=total)
            cursor: str | None = None
            while True:
                page = _page(client, path, page_size, cursor, console)
                for cid in page["members"]:
                    if writer is not None:
                        writer.writerow([cid])
                    else:
                        sink.write(json.dumps({"customer_id": cid}) + "\n")
                written += len(page["members"])
                if total is not None and written > total:
                    total = written  # members joined while paging
                progress.update(task, completed=written, total=total)
                cursor = page.get("next_cursor")
                if not cursor:
                    break
    finally:
        client.close()
        if out is not None:
            sink.close()
    console.print(f"{written:,} members of {segmentation}/{segment}"
                  + (f" written to {out}" if out is not None else ""))


def _page(client: Any, path: str, limit: int, cursor: str | None, console: Console
          ) -> dict[str, Any]:
    import httpx

    params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
    for attempt in range(RETRIES + 1):
        try:
            resp = client.get(path, params=params)
        except httpx.HTTPError as exc:
            console.print(f"[red]segmenter members:[/] no worker at {client.base_url}: {exc}")
            raise typer.Exit(1) from None
        if resp.status_code == 503 and attempt < RETRIES:
            time.sleep(float(resp.headers.get("Retry-After", "2")))
            continue
        if resp.status_code != 200:
            console.print(f"[red]segmenter members:[/] {resp.status_code}: "
                          f"{_error(resp)}")
            raise typer.Exit(1)
        return resp.json()  # type: ignore[no-any-return]
    raise AssertionError("unreachable")


def _error(resp: Any) -> str:
    try:
        return str(resp.json().get("error", resp.text))
    except ValueError:
        return str(resp.text[:200])


def _size(client: Any, segmentation: str, segment: str) -> int | None:
    """The segment's live size from /segments, for the progress bar (None: unknown)."""
    import httpx

    try:
        doc = client.get("/segments").json()
    except (httpx.HTTPError, ValueError):
        return None
    for seg in doc.get("segmentations", []):
        if seg.get("name") == segmentation:
            for item in seg.get("segments", []):
                if item.get("id") == segment:
                    return int(item.get("size", 0))
    return None
