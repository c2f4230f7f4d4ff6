"""The lab: the in-process simulator and the experiment runner, the one place that runs silo and
aggregator code together (``fedalign-lab simulate``). ``silo``, ``aggregator`` and the shared
packages never import it.
"""
