"""In-process federated simulator: the one place that runs silo and aggregator code together.

``aggregator simulate`` imports this lazily; ``silo`` and ``aggregator`` never import each other.
"""
