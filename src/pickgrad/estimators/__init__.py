"""Gradient estimators, each usable by name through the registry or as an object.

Importing this package registers every built-in estimator.
"""

from pickgrad.estimators.base import (
    Estimator,
    available_estimators,
    get_estimator,
    register_estimator,
    replace_gradient,
)
from pickgrad.estimators.blackbox import Blackbox
from pickgrad.estimators.fenchel_young import fenchel_young_loss
from pickgrad.estimators.gumbel import GumbelRao, GumbelRelaxed, StraightThroughGumbel
from pickgrad.estimators.imle import IMLE
from pickgrad.estimators.perturbed import Perturbed
from pickgrad.estimators.reinforce import BASELINES, Reinforce
from pickgrad.estimators.straight_through import Relaxed, StraightThrough, StraightThroughRelaxed

__all__ = [
    "BASELINES",
    "IMLE",
    "Blackbox",
    "Estimator",
    "GumbelRao",
    "GumbelRelaxed",
    "Perturbed",
    "Reinforce",
    "Relaxed",
    "StraightThrough",
    "StraightThroughGumbel",
    "StraightThroughRelaxed",
    "available_estimators",
    "fenchel_young_loss",
    "get_estimator",
    "register_estimator",
    "replace_gradient",
]
