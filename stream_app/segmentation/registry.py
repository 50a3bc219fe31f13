"""Build the segmentations a worker evaluates, from settings."""

from __future__ import annotations

from ..config import Settings
from .base import Segmentation


def build_segmentations(settings: Settings) -> list[Segmentation]:
    """Rule segmentations from SEGMENTER_SEGMENTS_FILE (or the shipped defaults).

    Raises :class:`~stream_app.segmentation.rules.DefinitionsError` for a bad file.
    """
    from .rules import load_segmentations

    segs: list[Segmentation] = list(load_segmentations(settings.segments_file))
    return segs
