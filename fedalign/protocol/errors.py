"""The project's exception tree.

Every error the toolkit raises on purpose derives from :class:`FedAlignError`; the CLIs map
these classes to exit codes in one table (``fedalign.host.cli_errors``) and print one line.

    FedAlignError
    ├── ConfigError (ValueError)          a config file or option is invalid (names file and field)
    ├── DataError (ValueError)            a bad data record (names file and line)
    ├── ModelLoadError                    a model path or hub id cannot be loaded
    ├── PrivacyError
    │   └── PrivacyBudgetExceeded         the next round would exceed (epsilon, delta): fail closed
    ├── ProtocolError                     a message out of place (names silo and stage)
    │   ├── WireFormatError (ValueError)  a frame that does not match its declared spec
    │   ├── AggregatorInputError          a well-formed message whose content a silo cannot use
    │   └── RoundAborted                  too few silos survived a step; nothing was revealed
    ├── InsecureModeRefused               an insecure mode was asked for without every permission
    ├── CheckpointError                   a checkpoint or ledger cannot be read or written
    ├── StoppedEarly                      the run ended before its planned rounds (data spent, budget
    │                                     reached); what finished was evaluated and exported
    └── DistributedError                  a rank of a multi-process (torchrun) silo failed or stalled

Cryptographic failures live in ``crypto.errors`` (crypto imports nothing from here) and are
opaque on purpose: one type, no detail an attacker could use.
"""

from __future__ import annotations

__all__ = [
    "FedAlignError",
    "ConfigError",
    "DataError",
    "ModelLoadError",
    "PrivacyError",
    "PrivacyBudgetExceeded",
    "ProtocolError",
    "WireFormatError",
    "AggregatorInputError",
    "RoundAborted",
    "InsecureModeRefused",
    "CheckpointError",
    "StoppedEarly",
    "ReferenceFailed",
    "DistributedError",
]


class FedAlignError(Exception):
    """Root of every error the toolkit raises on purpose."""


class ConfigError(FedAlignError, ValueError):
    """A configuration file or option is invalid; the message names the file and the field."""


class DataError(FedAlignError, ValueError):
    """A data record is bad; the message names the file and the line."""


class ModelLoadError(FedAlignError):
    """A model path or hub id cannot be loaded (missing, wrong architecture, not offline)."""


class PrivacyError(FedAlignError):
    """A differential-privacy setting or charge is invalid."""


class PrivacyBudgetExceeded(PrivacyError):
    """The next charge would exceed the silo's (epsilon, delta) budget; nothing was sent."""


class ProtocolError(FedAlignError):
    """A message arrived out of place; the message names the silo and the stage."""


class WireFormatError(ProtocolError, ValueError):
    """A frame does not match the spec its header declared."""


class AggregatorInputError(ProtocolError):
    """The aggregator sent a message whose content this silo cannot use (a tensor of the wrong dtype or
    shape, a non-finite value, an option or a phase out of range); the silo refused it and left."""


class RoundAborted(ProtocolError):
    """A round step ended with fewer survivors than the threshold; nothing was revealed."""


class InsecureModeRefused(FedAlignError):
    """An insecure mode (plain sums, plaintext transport) lacks the policy or the flag."""


class CheckpointError(FedAlignError):
    """A checkpoint or ledger cannot be read or written."""


class StoppedEarly(FedAlignError):
    """The run stopped before its planned rounds (one-pass data spent, DP budget reached); the
    rounds that finished were kept, evaluated and exported, and no data or ε went to a round
    that could not finish. The message says why, how far it got and where the outputs are."""


class ReferenceFailed(FedAlignError):
    """The coordinator's reference process (``silo reference``, Fed-CMP reliability "reference") could
    not start, failed a request or missed its deadline; the message names its config and its log."""


class DistributedError(FedAlignError):
    """A process of a multi-process silo (torchrun) failed, stalled past the timeout, or could not
    join the process group; the message names this process's rank."""
