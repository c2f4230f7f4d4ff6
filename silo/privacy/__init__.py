"""Record-level differential privacy at the silo, in one room: settings, plan, accountant, mechanism.

The walk of ε through a run:

- :mod:`.settings`: ``[privacy]`` as the silo reads it (:class:`DPSettings`: the expert σ or none,
  the clip, clipping, passes, the insecure test seed).
- :mod:`.plan`: σ for the planned schedule, derived once per run (:func:`plan_for`, before any model
  loads) and passed on as a :class:`DPPlan`: to the trainer, to the site policy's per-pass clause,
  to the ledger (``dp_plan``) and to the log, which warns when the plan cannot learn.
- :mod:`.accountant`: the budget (:class:`PrivacyAccountant`), checked once per round before the
  round uses any data (:meth:`PrivacyAccountant.admit`) and recorded before the update leaves
  (:meth:`PrivacyAccountant.commit`: state file ``privacy.json``, then the ledger); the state file
  read in one place (:func:`read_state`, also for ``silo status``).
- :mod:`.mechanism`: Opacus on the projector (:class:`DPProjectorTrainer`), Poisson batches and the
  OS-seeded generators of the noise; after a round, :func:`clip_hint` tells the operator when the clip
  norm sits far above the per-sample gradients (local figures, never sent).

This package is the room's public face: import from ``fedalign.silo.privacy``.
"""

from fedalign.silo.privacy.accountant import (AccountantState, Admission, PrivacyAccountant, RoundCharge,
                                              compute_epsilon, privacy_status, read_state)
from fedalign.silo.privacy.mechanism import (CLIP_FAR_ABOVE, DPProjectorTrainer, clip_hint, dp_generator,
                                             os_seeded_generator, poisson_batches)
from fedalign.silo.privacy.plan import NOISE_TO_CLIP_WARN, DPPlan, noise_for_budget, plan_dp, plan_for
from fedalign.silo.privacy.settings import DPSettings, dp_settings

__all__ = [
    "DPSettings", "dp_settings",
    "DPPlan", "plan_dp", "plan_for", "noise_for_budget", "NOISE_TO_CLIP_WARN",
    "RoundCharge", "Admission", "AccountantState", "PrivacyAccountant", "compute_epsilon", "read_state",
    "privacy_status",
    "DPProjectorTrainer", "os_seeded_generator", "dp_generator", "poisson_batches", "clip_hint", "CLIP_FAR_ABOVE",
]
