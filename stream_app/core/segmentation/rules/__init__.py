"""Named rule segments beside the learned clusters: declared in a file, checked at load.

:func:`load_segmentations` gives one :class:`RuleSegmentation` per named segmentation of a
definitions file (or of the shipped defaults); see ``docs/rules.md`` for the file format.
"""

from .definitions import Definitions, DefinitionsError, load_definitions, parse_definitions
from .segmentation import RuleSegmentation, load_segmentations

__all__ = [
    "Definitions",
    "DefinitionsError",
    "RuleSegmentation",
    "load_definitions",
    "load_segmentations",
    "parse_definitions",
]
