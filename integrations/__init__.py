"""Framework adapters, one small module each, all with the same shape.

Each module imports its framework only when used and raises a one-line ImportError naming the
extra to install when the framework is missing. Tracing adapters expose ``instrument()`` /
``uninstrument()`` (idempotent, like opentelemetry-python-contrib instrumentations); supervising
adapters wrap the framework's own objects (a node, a graph, an agent run, a workflow) so each run
is one supervised session.
"""
