"""zmq-fabric: a RocketMQ-class message fabric on ZeroMQ (client library and shared protocol).

The library logs through loguru but stays silent unless an entry point enables it
(the loguru library convention): ``logger.enable("fabric")``.
"""

from __future__ import annotations

from loguru import logger

logger.disable("fabric")

__version__ = "0.1.0"

__all__ = ["__version__"]
