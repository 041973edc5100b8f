"""Gradient diagnostics: exact gradients, bias/variance reports, and the estimator advisor."""

from pickgrad.diagnostics.exact import ExactGradient, exact_gradient
from pickgrad.diagnostics.monitor import GradientMonitor
from pickgrad.diagnostics.problems import PROBLEMS, Problem, load_problem
from pickgrad.diagnostics.report import (
    DiagnosticReport,
    EstimatorStats,
    Recommendation,
    diagnose,
)

__all__ = [
    "PROBLEMS",
    "DiagnosticReport",
    "EstimatorStats",
    "ExactGradient",
    "GradientMonitor",
    "Problem",
    "Recommendation",
    "diagnose",
    "exact_gradient",
    "load_problem",
]
