"""The sweep's entry point on a (random-weight) tiny_sd-layout pipeline, and CLIP score with a local HF CLIP."""

import pytest
import torch

import metrics
from metrics import ClipModelMissing, HFClipScorer, evaluate_pipeline


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_evaluate_pipeline_pairs_seeds_and_reports_seed_ci(pipe, tmp_path):
    cfg = {"cache_dir": str(tmp_path), "fid": {"enabled": False}, "reference": {"n": 30},
           "kid": {"subsets": 3, "subset_size": 8}, "uncertainty": {"bootstrap": 10}}
    prompts = ["a red circle", "a blue square left of a green triangle", "a yellow diamond", "a purple circle"]
    r = evaluate_pipeline(pipe, prompts, seeds=[0, 1], cfg=cfg, sample_steps=2, guidance_scale=7.5,
                          batch_size=2, keep_images=3, progress=False)
    assert r["provenance"]["n"] == 8 and r["provenance"]["seeds"] == [0, 1]
    assert r["provenance"]["sampler"] == type(pipe.scheduler).__name__ and r["provenance"]["sample_steps"] == 2
    assert set(r["per_seed"]) == {0, 1} and "fd_evaluator" in r["per_seed"][0]
    m, lo, hi = r["seed_ci"]["fd_evaluator"]
    assert lo <= m <= hi
    assert r["images"].shape[0] == 3 and 0 <= float(r["images"].min()) and float(r["images"].max()) <= 1
    # paired seeds: the same call reproduces the same images (and so the same metrics)
    r2 = evaluate_pipeline(pipe, prompts, seeds=[0, 1], cfg=cfg, sample_steps=2, batch_size=4,
                           keep_images=3, progress=False)
    assert torch.allclose(r["images"], r2["images"], atol=1e-5)
    assert metrics.image_seed(0, 1) != metrics.image_seed(1, 0)


def _save_tiny_clip(path, tokenizer):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77,
                                  "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
                     vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                     projection_dim=16)
    CLIPModel(cfg).save_pretrained(path)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}),
                         tokenizer=tokenizer)
    proc.save_pretrained(path)
    return path


def test_hf_clip_from_local_folder_matches_torchmetrics(pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _save_tiny_clip(tmp_path / "tiny-clip", pipe.tokenizer)
    scorer = HFClipScorer(str(path))
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    caps = ["a red circle", "a blue square", "a green diamond", "a yellow triangle"]
    cos = scorer(x, caps)
    assert cos.shape == (4,) and torch.all(cos.abs() <= 1)
    # independent computation through CLIP's own towers and projections (torchmetrics 1.9's CLIPScore cannot be
    # used as the reference: it breaks on transformers 5, whose get_*_features return output objects)
    m, proc = scorer.model, scorer.processor
    inp = proc(text=caps, images=list((x * 255).round().byte()), return_tensors="pt", padding=True)
    with torch.no_grad():
        img = m.visual_projection(m.vision_model(pixel_values=inp["pixel_values"]).pooler_output)
        txt = m.text_projection(m.text_model(input_ids=inp["input_ids"],
                                             attention_mask=inp["attention_mask"]).pooler_output)
    ref = torch.nn.functional.cosine_similarity(img, txt)
    assert torch.allclose(cos, ref, atol=1e-5)
    r = metrics.score_images(x, caps, {"cache_dir": str(tmp_path / "c"), "fid": {"enabled": False},
                                       "evaluator": {"enabled": False}, "clip": {"model": str(path)},
                                       "primary": "clip_score", "uncertainty": {"bootstrap": 5}})
    assert r["metrics"]["clip_score"] == pytest.approx(float(cos.mean()), rel=1e-5)
    assert r["provenance"]["clip"]["backbone"] == "tiny-clip" and "raw cosine" in r["provenance"]["clip"]["scale"]
    assert "shortest edge to 32" in r["provenance"]["clip"]["resize"]           # the processor's own resize
    assert "centre crop 32x32" in r["provenance"]["clip"]["resize"]


def test_clip_scores_full_resolution_images_not_the_metrics_thumbnails(tmp_path, monkeypatch):
    seen = []

    class RecordingClip:  # stands in for HFClipScorer: records what it is given
        backbone = "recording-stub"

        def __init__(self, name_or_path, device=None):
            pass

        def __call__(self, images, captions):
            seen.append((tuple(images.shape), float(images.min()), float(images.max())))
            return torch.full((len(images),), 0.25)

    monkeypatch.setattr(metrics.clip_hf, "HFClipScorer", RecordingClip)
    x = torch.rand(3, 3, 160, 96, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2   # SD-like overshoot
    r = metrics.score_images(x, ["a", "b", "c"], {"cache_dir": str(tmp_path), "fid": {"enabled": False},
                                                  "evaluator": {"enabled": False}, "clip": {"model": "stub"},
                                                  "primary": "clip_score", "resolution": 32,
                                                  "uncertainty": {"bootstrap": 0}})
    assert seen == [((3, 3, 160, 96), 0.0, 1.0)]      # not the 32 px metrics resolution; clamped to [0, 1]
    assert r["metrics"]["clip_score"] == pytest.approx(0.25) and r["primary"] == "clip_score"


def test_hf_clip_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipModelMissing, match="huggingface-cli download openai/clip-vit-not-here"):
        HFClipScorer("openai/clip-vit-not-here")
