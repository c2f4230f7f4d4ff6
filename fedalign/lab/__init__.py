"""The lab: the in-process simulator and the results (every experiment family in one registry, one
runner, one table writer), the one place that runs silo and aggregator code together
(``fedalign-lab simulate``, ``fedalign-lab experiment run|table FAMILY``). ``silo``, ``aggregator`` and the shared
packages never import it.
"""
