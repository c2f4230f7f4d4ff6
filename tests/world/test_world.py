"""The embedded world: scenes, captions, probes, scenarios, writers, and the tiny model build.

Model tests use TINY_SPEC (toy sizes, a few training steps) so they build in seconds; the
real world's quality is measured by `fedalign-lab experiment run world-check`, not here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedalign.protocol.errors import ConfigError
from fedalign.world import (
    CAPTION_PROMPT,
    CAPTION_STYLES,
    IMAGE_TOKEN,
    N_IMAGE_TOKENS,
    PLACEHOLDER_TOKEN,
    SCENARIOS,
    TINY_SPEC,
    WorldSpec,
    build_world,
    caption,
    load_world,
    make_eval_items,
    make_samples,
    make_scenario,
    render,
    sample_scene,
    scene_prefix,
    skew_report,
    text_only_prompt,
    write_jsonl,
    write_llava_json,
)
from fedalign.world.pretrain import image_processor, pixel_values
from fedalign.world.text import PREFIX_WORDS, vocabulary
from fedalign.world.tokenizer import build_tokenizer


# -- scenes, images, captions ----------------------------------------------------------------
def test_same_seed_same_scenes_images_captions():
    a = make_samples(20, np.random.default_rng(7))
    b = make_samples(20, np.random.default_rng(7))
    c = make_samples(20, np.random.default_rng(8))
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert [s.caption for s in a] != [s.caption for s in c]


def test_render_is_a_function_of_the_scene_and_shows_the_objects():
    rng = np.random.default_rng(0)
    for _ in range(30):
        scene = sample_scene(rng)
        img = render(scene)
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        assert np.array_equal(img, render(scene))
    # an object changes the pixels of its own quadrant only
    scene = sample_scene(np.random.default_rng(3), counts=(1,))
    empty = type(scene)((), scene.domain, scene.render_seed)
    diff = np.abs(render(scene).astype(int) - render(empty).astype(int)).sum(-1) > 0
    q = scene.objects[0].position
    rows, cols = np.nonzero(diff)
    assert diff.any() and set((rows // 16) * 2 + cols // 16) == {q}


def test_captions_use_only_the_vocabulary_and_styles_differ():
    vocab = set(vocabulary())
    scene = sample_scene(np.random.default_rng(1), counts=(3,))
    caps = {st: caption(scene, st) for st in CAPTION_STYLES}
    assert len(set(caps.values())) == len(CAPTION_STYLES)
    for text in caps.values():
        assert set(text.split()) <= vocab
    assert scene.objects[0].shape in caps["terse"] and scene.objects[0].colour in caps["terse"]
    with pytest.raises(ValueError, match="caption style"):
        caption(scene, "haiku")


def test_prefix_has_one_word_per_patch_from_the_prefix_vocabulary():
    rng = np.random.default_rng(2)
    for _ in range(20):
        scene = sample_scene(rng)
        words = scene_prefix(scene)
        assert len(words) == N_IMAGE_TOKENS and set(words) <= set(PREFIX_WORDS)
        for obj in scene.objects:
            assert {obj.size, obj.colour, obj.shape} <= set(words)


def test_tokenizer_matches_word_split_and_knows_special_tokens():
    tok = build_tokenizer()
    text = caption(sample_scene(np.random.default_rng(4), counts=(3,)), "verbose")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == text.split()
    assert tok.unk_token_id not in ids
    full = tok(f"{IMAGE_TOKEN} {text}")["input_ids"]
    assert full[0] == tok.bos_token_id and full[1] == tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert text_only_prompt(CAPTION_PROMPT).split() == [PLACEHOLDER_TOKEN] * N_IMAGE_TOKENS


def test_processor_equals_the_pretraining_normalisation():
    imgs = np.stack([render(sample_scene(np.random.default_rng(i))) for i in range(3)])
    got = image_processor()(images=list(imgs), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(got, pixel_values(imgs), atol=1e-5, rtol=0)


# -- evaluation items --------------------------------------------------------------------------
def test_eval_items_are_well_formed_and_presence_is_balanced():
    samples = make_samples(40, np.random.default_rng(5))
    items = make_eval_items(samples, seed=0)
    kinds = {it.kind for it in items}
    assert {"caption_mc", "presence", "shape", "count"} <= kinds
    for it in items:
        assert it.prompt.count(IMAGE_TOKEN) == 1
        assert 0 <= it.answer < len(it.candidates)
        assert len(set(it.candidates)) == len(it.candidates)
        if it.kind == "caption_mc":
            assert len(it.candidates) == 4
            assert it.candidates[it.answer] in {caption(it.scene, st) for st in CAPTION_STYLES}
            lengths = {len(c.split()) for c in it.candidates}
            assert len(lengths) == 1  # distractors differ in attributes, not length
        if it.kind == "presence":
            obj_pairs = {(o.colour, o.shape) for o in it.scene.objects}
            words = it.prompt.split()
            pair = (words[words.index("a") + 1], words[words.index("a") + 2])
            assert (pair in obj_pairs) == (it.candidates[it.answer] == "yes")
        if it.kind == "colour":
            shape = it.prompt.split()[it.prompt.split().index("the") + 1]
            assert [o.colour for o in it.scene.objects if o.shape == shape] == [it.candidates[it.answer]]
    answers = [it.candidates[it.answer] for it in items if it.kind == "presence"]
    assert answers.count("yes") == answers.count("no") == 20
    again = make_eval_items(samples, seed=0)
    assert [(i.prompt, i.candidates, i.answer) for i in again] == [(i.prompt, i.candidates, i.answer) for i in items]


# -- scenarios ---------------------------------------------------------------------------------
def _ids(scenario):
    return [(s.scene.render_seed, s.caption) for silo in scenario.silos for s in silo]


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_partitions_are_disjoint_and_sized(name):
    sc = make_scenario(name, n_silos=4, seed=1, samples_per_silo=60, test_size=40, min_samples=10)
    assert len(sc.silos) == 4 and len(sc.test) == 40
    sizes = [len(s) for s in sc.silos]
    assert sum(sizes) == 4 * 60
    if name != "unreliable":
        assert sizes == [60] * 4
    seeds = [s.scene.render_seed for silo in sc.silos for s in silo] + [s.scene.render_seed for s in sc.test]
    assert len(set(seeds)) == len(seeds)
    assert not any(s.corrupted for s in sc.test)
    again = make_scenario(name, n_silos=4, seed=1, samples_per_silo=60, test_size=40, min_samples=10)
    assert _ids(again) == _ids(sc)


def test_each_scenario_skews_what_it_says():
    kw = dict(n_silos=5, seed=0, samples_per_silo=150, test_size=0)
    iid = skew_report(make_scenario("iid", **kw))
    label = skew_report(make_scenario("label_skew", alpha=0.1, **kw))
    domain = skew_report(make_scenario("domain_skew", purity=0.9, **kw))
    style = skew_report(make_scenario("style_skew", purity=0.9, **kw))
    bad = make_scenario("unreliable", n_unreliable=2, corrupt_fraction=0.8, **kw)
    rep = skew_report(bad)
    assert label["tv_shape"] > 0.4 > 3 * iid["tv_shape"]
    assert domain["tv_domain"] > 0.5 > 3 * iid["tv_domain"]
    assert style["tv_style"] > 0.5 > 3 * iid["tv_style"]
    assert rep["size_max_over_min"] > 2.0
    sizes = [len(s) for s in bad.silos]
    assert sorted(bad.unreliable) == sorted(np.argsort(sizes)[-2:].tolist())  # the largest two
    for k, silo in enumerate(bad.silos):
        share = np.mean([s.corrupted for s in silo])
        assert share == pytest.approx(0.8 if k in bad.unreliable else 0.0, abs=0.01)
        matches = [s.caption == caption(s.scene, s.style) for s in silo]
        assert all(m for m, s in zip(matches, silo) if not s.corrupted)
        bad_matches = [m for m, s in zip(matches, silo) if s.corrupted]
        assert not bad_matches or np.mean(bad_matches) < 0.1  # a random caption rarely fits
    # the corruption rate changes the mismatched captions only: images and clean silos stay
    milder = make_scenario("unreliable", n_unreliable=2, corrupt_fraction=0.3, **kw)
    for a, b in zip(bad.silos, milder.silos):
        assert [s.scene for s in a] == [s.scene for s in b]
        assert sum(s.corrupted for s in b) < sum(s.corrupted for s in a) or not any(s.corrupted for s in a)
    clean = [k for k in range(len(bad.silos)) if k not in bad.unreliable]
    assert all([s.caption for s in bad.silos[k]] == [s.caption for s in milder.silos[k]] for k in clean)


def test_label_skew_weakens_as_alpha_grows():
    kw = dict(n_silos=6, seed=3, samples_per_silo=120, test_size=0)
    strong = skew_report(make_scenario("label_skew", alpha=0.05, **kw))["tv_shape"]
    weak = skew_report(make_scenario("label_skew", alpha=100.0, **kw))["tv_shape"]
    assert strong > 2 * weak


@pytest.mark.parametrize(
    "kwargs,field",
    [({"alpha": 0.0}, "alpha"), ({"purity": 1.5}, "purity"), ({"corrupt_fraction": -0.1}, "corrupt_fraction"),
     ({"n_unreliable": 9}, "n_unreliable"), ({"skew_attribute": "size"}, "skew_attribute")],
)
def test_bad_scenario_options_name_the_option(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        make_scenario("unreliable" if "unreliable" in field or "corrupt" in field else "label_skew",
                      n_silos=4, **kwargs)
    with pytest.raises(ConfigError, match="scenario"):
        make_scenario("no_such_scenario")


# -- writers -----------------------------------------------------------------------------------
def test_jsonl_and_llava_writers_read_back(tmp_path):
    from PIL import Image

    samples = make_samples(6, np.random.default_rng(9))
    path = write_jsonl(samples, tmp_path / "jl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["caption"] for r in rows] == [s.caption for s in samples]
    for r, s in zip(rows, samples):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "jl" / r["image"]).convert("RGB")), s.image)
    path = write_llava_json(samples, tmp_path / "ll")
    data = json.loads(path.read_text())
    assert [d["conversations"][1]["value"] for d in data] == [s.caption for s in samples]
    assert all(IMAGE_TOKEN in d["conversations"][0]["value"] for d in data)
    try:
        from fedalign.silo.data import read_records
    except ImportError:  # the data reader belongs to another module; checked once it exists
        return
    for p in (tmp_path / "jl" / "data.jsonl", tmp_path / "ll" / "data.json"):
        recs = read_records(p)
        recs = recs[0] if isinstance(recs, tuple) else recs
        assert [r.caption for r in recs] == [s.caption for s in samples]


# -- the tiny world build ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    cache = tmp_path_factory.mktemp("world-cache")
    return cache, build_world(TINY_SPEC, cache_dir=cache)


def _first_logits(art):
    vision, processor, lm, tok = load_world(art)
    img = render(sample_scene(np.random.default_rng(0)))
    with torch.no_grad():
        feats = vision(**processor(images=[img], return_tensors="pt")).last_hidden_state
        logits = lm(**tok(["<image> red circle"], return_tensors="pt")).logits
    return feats, logits


def test_build_is_cached_and_loads_through_auto_classes(tiny_world, monkeypatch):
    cache, art = tiny_world
    assert art.built
    from fedalign.world import pretrain

    def boom(*a, **k):
        raise AssertionError("a cached world must not be retrained")

    monkeypatch.setattr(pretrain, "pretrain_vision", boom)
    monkeypatch.setattr("fedalign.world.build.pretrain_vision", boom)
    again = build_world(TINY_SPEC, cache_dir=cache)
    assert not again.built and again.vision_path == art.vision_path
    from transformers import AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer

    assert type(AutoModel.from_pretrained(art.vision_path)).__name__ == "ViTModel"
    assert type(AutoModelForCausalLM.from_pretrained(art.lm_path)).__name__ == "LlamaForCausalLM"
    tok = AutoTokenizer.from_pretrained(art.lm_path)
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) != tok.unk_token_id
    assert AutoImageProcessor.from_pretrained(art.vision_path) is not None
    assert json.loads((art.vision_path.parent / "spec.json").read_text())["seed"] == TINY_SPEC.seed
    assert not [p for p in cache.iterdir() if p.name.startswith(".building-")]


def test_build_is_deterministic_and_seeded(tiny_world, tmp_path):
    """Same spec, same weights, whether built in one process or with the ViT in a second one."""
    _, art = tiny_world
    from fedalign.world.build import default_build_jobs

    assert default_build_jobs(TINY_SPEC) == 1  # a toy world is not worth a spawned process
    other = build_world(TINY_SPEC, cache_dir=tmp_path / "second", jobs=2)
    assert other.built and other.vision_path != art.vision_path
    assert json.loads((other.vision_path.parent / "build.json").read_text())["build_jobs"] == 2
    assert json.loads((art.vision_path.parent / "build.json").read_text())["build_jobs"] == 1
    fa, la = _first_logits(art)
    fb, lb = _first_logits(other)
    torch.testing.assert_close(fa, fb, rtol=0, atol=0)
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    import dataclasses

    third = build_world(dataclasses.replace(TINY_SPEC, seed=1), cache_dir=tmp_path / "second")
    assert third.vision_path != other.vision_path
    fc, lc = _first_logits(third)
    assert not torch.equal(la, lc)


def test_project_model_loader_reads_the_world(tiny_world):
    from fedalign.silo.model import load_alignment_model

    _, art = tiny_world
    model = load_alignment_model(str(art.vision_path), str(art.lm_path), device="cpu",
                                 generator=torch.Generator().manual_seed(0))
    assert model.n_image_tokens == N_IMAGE_TOKENS
    samples = make_samples(3, np.random.default_rng(0))
    feats = model.encode_images([s.image for s in samples])
    batch = model.collate([model.encode_text(CAPTION_PROMPT, s.caption) for s in samples])
    loss = model.loss_per_sample(feats, batch)
    assert loss.shape == (3,) and torch.isfinite(loss).all()


def test_world_spec_validates_and_round_trips():
    spec = WorldSpec(seed=3, counts=(1, 2))
    assert WorldSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ConfigError, match="p_no_prefix"):
        WorldSpec(p_no_prefix=1.5)
    with pytest.raises(ConfigError, match="counts"):
        WorldSpec(counts=(4,))
    with pytest.raises(ConfigError, match="unknown"):
        WorldSpec.from_json('{"seeds": 1}')


def test_lm_pretraining_texts_put_the_prefix_where_the_image_goes():
    from fedalign.world.pretrain import lm_example

    spec = WorldSpec(p_placeholder_prefix=0.0, p_no_prefix=0.0, p_token_dropout=0.0, lm_extra_qa=1)
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene = sample_scene(rng)
        words, scored, is_prefix = lm_example(scene, spec, rng)
        assert len(words) == len(scored) == len(is_prefix)
        assert words[:N_IMAGE_TOKENS] == scene_prefix(scene) and all(is_prefix[:N_IMAGE_TOKENS])
        assert not any(is_prefix[N_IMAGE_TOKENS:]) and not any(scored[:N_IMAGE_TOKENS])
        assert words[-1] == "</s>" and scored[-1] and words.count("</s>") == 2
        first = words[N_IMAGE_TOKENS : words.index("</s>")]
        if first[0] != "question":  # a caption: every word of it is scored
            assert " ".join(first) in {caption(scene, st) for st in CAPTION_STYLES}
            assert all(scored[N_IMAGE_TOKENS : words.index("</s>") + 1])
    blank = WorldSpec(p_placeholder_prefix=1.0, p_no_prefix=0.0)
    words, _, is_prefix = lm_example(sample_scene(rng), blank, rng)
    assert words[:N_IMAGE_TOKENS] == [PLACEHOLDER_TOKEN] * N_IMAGE_TOKENS and not any(is_prefix)
