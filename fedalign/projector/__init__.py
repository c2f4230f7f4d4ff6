"""The cross-modal projector, as every party sees it: LLaVA's kinds, each kind's parameter names and
shapes, its initialisation from a seed, the first difference between two layouts (``shapes``), and
the key layouts a projector file may use: ours, LLaVA's and Hugging Face Llava's (``keys``).

Pure torch (no transformers): the aggregator makes θ_0 here and a silo builds its module from the
same tensors, so the two cannot drift apart.
"""

from fedalign.projector.keys import (from_hf_llava_layout, from_llava_layout, projector_kind, to_hf_llava_layout,
                                     to_llava_layout, to_our_layout)
from fedalign.projector.shapes import PROJECTOR_KINDS, init_projector, layout_mismatch, projector_shapes

__all__ = ["PROJECTOR_KINDS", "projector_shapes", "init_projector", "layout_mismatch", "projector_kind",
           "to_our_layout", "to_llava_layout", "from_llava_layout", "to_hf_llava_layout", "from_hf_llava_layout"]
