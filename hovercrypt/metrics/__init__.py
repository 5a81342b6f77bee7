"""Evaluation metrics: pixel Dice, AJI/AJI+, PQ, GlaS object metrics and type metrics.

All of them are derived from one sparse overlap table (:func:`contingency`);
:func:`evaluate_pair` computes that table once and returns every metric.
"""

from hovercrypt.metrics.contingency import Contingency, contingency
from hovercrypt.metrics.evaluate import aggregate, evaluate_detailed, evaluate_pair
from hovercrypt.metrics.glas import object_dice, object_f1, object_hausdorff
from hovercrypt.metrics.instance import aji, aji_plus, dice, pq
from hovercrypt.metrics.types import pair_centroids, type_metrics

__all__ = [
    "Contingency",
    "aggregate",
    "aji",
    "aji_plus",
    "contingency",
    "dice",
    "evaluate_detailed",
    "evaluate_pair",
    "object_dice",
    "object_f1",
    "object_hausdorff",
    "pair_centroids",
    "pq",
    "type_metrics",
]
