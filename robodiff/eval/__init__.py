"""Evaluation: rollouts (the episode loop on a simulated clock over worker processes), statistics,
plots and reports."""

from __future__ import annotations

from robodiff.eval.evaluation import POLICY_NAMES, evaluate

__all__ = ["POLICY_NAMES", "evaluate"]
