"""Peer benchmarks (issue 7): the fabric against RabbitMQ, Redis Streams, NATS JetStream and
raw pyzmq, the same workloads, one machine, one session.

``python -m bench.peers --help`` runs it; ``bash bench/peers/install.sh`` installs the
peers (Debian's packages, their services not started) and their Python clients.

Modules:

* ``common``: settings, jobs and outcomes, worker processes, peer server processes.
* ``runner``: the rounds of each scenario; ``report``: medians, target ratios, Markdown.
* one module per system, each with the same worker functions (produce, consume,
  sync_latency, prepare, cleanup), its rows (``groups()``) and its server:
  ``rabbitmq``, ``redis_streams``, ``nats_jetstream``, ``zmq_raw``, ``fabric_side``.

The method is the one of shared/reference/peers-bench.md: one producer process, one
consumer process and the server, all on 127.0.0.1; 1 KiB bodies; medians of 3 runs.
"""
