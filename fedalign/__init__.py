"""fedalign: federated alignment of multimodal LLMs (LLaVA stage 1), privately.

Everything pip installs lives under this one name (docs/architecture.md draws the house):

- ``fedalign.silo`` (repository folder ``silo/``): one institution's side.
- ``fedalign.aggregator`` (``aggregator/``): the coordinator's side.
- ``fedalign.crypto`` (``crypto/``): "securely sum these arrays", over ``crypto/hazmat``.
- ``fedalign.protocol``: what both sides speak (messages, wire, transport, configs, ledger, errors).
- ``fedalign.fedcmp``: the strategy interface, Fed-CMP's math, the baselines and the one phase loop.
- ``fedalign.host``: what every process needs (atomic files, process defaults, exit codes).
- ``fedalign.world``: the embedded procedural world and its tiny frozen models.
- ``fedalign.lab``: the simulator and the experiment runner (drives silo and aggregator code).
"""

__version__ = "0.2.0"
