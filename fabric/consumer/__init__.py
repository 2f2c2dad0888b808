"""Consumers: the application pulls (PullConsumer, SPEC M9); a push consumer comes later (M10)."""

from __future__ import annotations

from .pull import PullConsumer, PullConsumerCore

__all__ = ["PullConsumer", "PullConsumerCore"]
