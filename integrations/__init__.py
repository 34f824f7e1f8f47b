"""Framework adapters, one small module each, all with the same shape.

Each module imports its framework only when used and raises a one-line ImportError naming the
extra to install when the framework is missing. Tracing adapters expose ``instrument()`` /
``uninstrument()`` through one shared base (``_base.Instrumentor``: idempotent, like
opentelemetry-python-contrib's ``BaseInstrumentor``; what it installs only observes, so calls
nobody supervises reach the framework unchanged); supervising adapters wrap the framework's own
objects (a node, a graph, an agent run, a workflow) so each run is one supervised session. Every
integration writes its model, tool and agent spans through ``telemetry.genai`` (the same GenAI
and OpenInference attributes, roles and token accounting), and one contract suite
(``tests/integrations/test_contract.py``) checks them all against each framework's documented
agent shapes.
"""
