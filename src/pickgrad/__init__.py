"""pickgrad: hard discrete choices that train by backpropagation.

Structures (what is chosen) and estimators (how gradients flow) are independent axes: every
estimator works on every structure that offers what it needs.
"""

from pickgrad._validation import set_validation, validation
from pickgrad.diagnostics import DiagnosticReport, ExactGradient, diagnose, exact_gradient
from pickgrad.estimators import (
    BASELINES,
    IMLE,
    Blackbox,
    Estimator,
    GumbelRao,
    GumbelRelaxed,
    Perturbed,
    Reinforce,
    Relaxed,
    StraightThrough,
    StraightThroughGumbel,
    StraightThroughRelaxed,
    available_estimators,
    fenchel_young_loss,
    get_estimator,
    register_estimator,
)
from pickgrad.schedules import Constant, ExponentialDecay, Schedule
from pickgrad.select import estimate, select
from pickgrad.structures import (
    Arborescence,
    OneHot,
    Permutation,
    SpanningTree,
    Structure,
    Subset,
)

__version__ = "0.1.0"

__all__ = [
    "BASELINES",
    "IMLE",
    "Arborescence",
    "Blackbox",
    "Constant",
    "DiagnosticReport",
    "Estimator",
    "ExactGradient",
    "ExponentialDecay",
    "GumbelRao",
    "GumbelRelaxed",
    "OneHot",
    "Permutation",
    "Perturbed",
    "Reinforce",
    "Relaxed",
    "Schedule",
    "SpanningTree",
    "StraightThrough",
    "StraightThroughGumbel",
    "StraightThroughRelaxed",
    "Structure",
    "Subset",
    "__version__",
    "available_estimators",
    "diagnose",
    "estimate",
    "exact_gradient",
    "fenchel_young_loss",
    "get_estimator",
    "register_estimator",
    "select",
    "set_validation",
    "validation",
]
