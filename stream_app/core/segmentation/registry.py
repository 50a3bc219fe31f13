"""Build the segmentations a worker evaluates, from settings."""

from __future__ import annotations

from collections.abc import Sequence

from ...config import Settings
from .base import Segmentation


def build_segmentations(settings: Settings, rules: Sequence[Segmentation] | None = None
                        ) -> list[Segmentation]:
    """The behavioural clustering (unless SEGMENTER_CLUSTERING=false) and the rule
    segmentations: ``rules``, else those of SEGMENTER_SEGMENTS_FILE (or the shipped
    defaults).

    Raises :class:`~stream_app.core.segmentation.rules.DefinitionsError` for a bad file.
    """
    from .rules import load_segmentations

    segs: list[Segmentation] = []
    if settings.clustering:
        from .clustering import BehaviorSegmentation

        segs.append(BehaviorSegmentation(min_learned=settings.model_min_learned))
    segs.extend(rules if rules is not None else load_segmentations(settings.segments_file))
    return segs
