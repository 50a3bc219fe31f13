"""What the ``segmenter`` subcommands share: the error console and settings loading."""

from __future__ import annotations

import typer
from rich.console import Console

from ..config import SettingsError, load_settings

# soft_wrap: a message is printed as one line, whatever the terminal width, so a long path
# or setting value in it stays whole (rich would otherwise break it at 80 columns off a tty)
console = Console(stderr=True, soft_wrap=True)


def settings_or_exit(**overrides: object):  # type: ignore[no-untyped-def]
    """The settings, or exit 2 with the message that names the bad setting."""
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        console.print(f"[bold red]segmenter:[/] {exc}")
        raise typer.Exit(2) from None
