"""The README is the user's manual: every setting and command it must document is there."""

from pathlib import Path

from typer.main import get_command

from stream_app.cli.main import cli
from stream_app.config import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented():
    missing = [f"SEGMENTER_{name.upper()}" for name in Settings.model_fields
               if f"`SEGMENTER_{name.upper()}`" not in README]
    assert not missing, f"README configuration table lacks {missing}"


def test_every_command_is_documented():
    commands = get_command(cli).commands  # type: ignore[attr-defined]
    missing = [name for name in commands if f"segmenter {name}" not in README]
    assert not missing, f"README lacks commands {missing}"


def test_the_two_commands_are_the_ones_ci_runs():
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "make test" in README and "make demo" in README
    assert "make test" in ci
