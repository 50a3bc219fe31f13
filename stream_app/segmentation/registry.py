"""Build the segmentations a worker evaluates, from settings."""

from __future__ import annotations

from ..config import Settings
from .base import Segmentation


def build_segmentations(settings: Settings) -> list[Segmentation]:
    """The behavioural clustering (unless SEGMENTER_CLUSTERING=false) and the rule
    segmentations from SEGMENTER_SEGMENTS_FILE (or the shipped defaults).

    Raises :class:`~stream_app.segmentation.rules.DefinitionsError` for a bad file.
    """
    from .rules import load_segmentations

    segs: list[Segmentation] = []
    if settings.clustering:
        from .clustering import BehaviorSegmentation

        segs.append(BehaviorSegmentation(min_learned=settings.model_min_learned))
    segs.extend(load_segmentations(settings.segments_file))
    return segs
