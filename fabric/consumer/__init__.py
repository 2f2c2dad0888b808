"""Consumers: the application pulls (PullConsumer, SPEC M9) or the broker pushes (PushConsumer,
SPEC M10-M14) to listeners in consumer groups."""

from __future__ import annotations

from .listener import ConsumeStatus
from .pull import PullConsumer, PullConsumerCore
from .push import PushConsumer
from .push_core import PushConsumerCore

__all__ = ["ConsumeStatus", "PullConsumer", "PullConsumerCore", "PushConsumer", "PushConsumerCore"]
