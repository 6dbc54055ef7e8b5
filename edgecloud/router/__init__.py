"""Escalation policies: pure functions from signals to a local/cloud decision.

Nothing here does I/O or reads a clock; the device runtime gathers the signals
(prompt length, endpoint health, cloud usage, per-token confidence) and asks.
Depends on the standard library only (numpy for the learned router's head).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecloud.common.lazy import lazy_attributes
from edgecloud.router._calibrate import (
    Calibration,
    WrongRateFit,
    auroc,
    calibrate_window,
    fit_wrong_rate,
    threshold_for_rate,
)
from edgecloud.router._monitor import ConfidenceMonitor, WindowThresholds, window_extremes
from edgecloud.router._policies import (
    DEFAULT_PRIVACY_PATTERNS,
    BudgetPolicy,
    ConnectivityPolicy,
    ContextLengthPolicy,
    Decision,
    ForcedRoutePolicy,
    LearnedRouterPolicy,
    Policy,
    PrivacyPolicy,
    RequestSignals,
    Route,
    route_request,
)
from edgecloud.router._privacy import DEFAULT_PII_ENTITIES, DETECTORS, PrivacyDetectors

if TYPE_CHECKING:
    from edgecloud.router._learned import LearnedRouter

__all__ = [
    "DEFAULT_PII_ENTITIES",
    "DEFAULT_PRIVACY_PATTERNS",
    "DETECTORS",
    "BudgetPolicy",
    "Calibration",
    "ConfidenceMonitor",
    "ConnectivityPolicy",
    "ContextLengthPolicy",
    "Decision",
    "ForcedRoutePolicy",
    "LearnedRouter",
    "LearnedRouterPolicy",
    "Policy",
    "PrivacyDetectors",
    "PrivacyPolicy",
    "RequestSignals",
    "Route",
    "WindowThresholds",
    "WrongRateFit",
    "auroc",
    "calibrate_window",
    "fit_wrong_rate",
    "route_request",
    "threshold_for_rate",
    "window_extremes",
]


# The learned router needs numpy; ``import edgecloud`` must not load it.
__getattr__ = lazy_attributes(__name__, {"LearnedRouter": "_learned"})
