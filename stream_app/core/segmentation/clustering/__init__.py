"""Online behavioural clustering: models, stable ids, profiles, the trainer and the scorer.

The worker side uses :class:`BehaviorSegmentation` (scores against snapshots); the single
model-owning agent uses :class:`Trainer` (learns, publishes snapshots).
"""

from .models import Clusterer, make_model, model_from_snapshot
from .segmentation import BehaviorSegmentation, Hysteresis, Scores
from .trainer import Trainer, TrainerSettings, learn_due

__all__ = [
    "BehaviorSegmentation",
    "Clusterer",
    "Hysteresis",
    "Scores",
    "Trainer",
    "TrainerSettings",
    "learn_due",
    "make_model",
    "model_from_snapshot",
]
