"""Build the segmentations a worker evaluates, from settings."""

from __future__ import annotations

from ..config import Settings
from .base import Segmentation


def build_segmentations(settings: Settings) -> list[Segmentation]:
    return []
