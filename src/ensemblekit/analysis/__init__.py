"""Analyses of trained ensembles beyond the standard metrics (e.g. parameter-space interpolation)."""

from ensemblekit.analysis.interpolation import MemberParameters, evaluate_member, interpolate_members

__all__ = ["MemberParameters", "evaluate_member", "interpolate_members"]
