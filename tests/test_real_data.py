"""The main job on the user's data: a random-weight pipeline with SD 1.5's block structure at 128 px, and image–caption
folders made here (shapes scenes saved as 128-px PNGs with a captions CSV, or a COCO captions JSON), a local HF
dataset, prompts files; training, the held-out loss, the prompts and the reference images provably from the data;
v-prediction, SDXL conditioning and autocast training; one process and two give identical numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from ablations import data as jobdata
from ablations import job, scoring
from metrics import data as mdata
from tiny_sd import training

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sd15_128_dir(tmp_path_factory):
    from tiny_sd.testing import save_random_pipeline

    return save_random_pipeline(tmp_path_factory.mktemp("pipe") / "sd15_128", layout="sd15_128")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from tiny_sd.testing import save_shapes_folder

    return save_shapes_folder(tmp_path_factory.mktemp("data"), 48, size=128)


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory):
    from tiny_sd.testing import save_shapes_folder

    return save_shapes_folder(tmp_path_factory.mktemp("coco"), 48, size=128, coco=True)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """Fresh latent and reference-statistics caches per test (counted reads must not be served from a cache)."""
    monkeypatch.setattr(training, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setenv("UNET_LAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _cfg(*overrides):
    with initialize_config_module(config_module="configs", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _folder_args(model_dir, images, captions, *extra):
    return [f"model.path={model_dir}", "data=folder", f"data.root={images}", f"data.captions={captions}",
            "data.heldout=24", "metrics.reference.n=8", "budget=smoke", "progress=false", *extra]


# ------------------------------------------------------------------------------------------------ sources
def test_split_is_deterministic_disjoint_and_counts_or_fractions(folder):
    src = mdata.FolderSource(*folder)
    train, held = mdata.split_heldout(src, 0.25)
    assert (len(train), len(held)) == (36, 12)
    again = mdata.split_heldout(mdata.FolderSource(*folder), 12)
    assert list(again[1].indices) == list(held.indices) and list(again[0].indices) == list(train.indices)
    assert not set(train.indices) & set(held.indices) and len(set(train.indices) | set(held.indices)) == 48
    assert list(train.indices) == sorted(train.indices)  # training rows in folder order
    with pytest.raises(ValueError, match="at least one image on each side"):
        mdata.split_heldout(src, 48)
    x, caps = held.load(0, 3, resolution=64)
    assert x.shape == (3, 3, 64, 64) and caps == [src.captions[i] for i in held.indices[:3]]


def test_coco_json_keeps_every_caption_and_training_uses_them_all(coco_folder, cache):
    src = mdata.FolderSource(*coco_folder)
    assert all(len(src.captions_of(i)) == 2 for i in range(len(src)))
    vae = _pipe_parts()["vae"]
    rows = training.latent_data(vae, src, resolution=64, all_captions=True, progress=False)
    assert len(rows) == 96 and rows.latents.shape[0] == 48
    assert torch.equal(rows.latent_batch([0, 1]), rows.latent_batch([0, 0]))  # two captions, one latent
    assert rows.captions[0] != rows.captions[1]


def _pipe_parts():
    from tiny_sd.testing import random_sd15_pipeline

    return random_sd15_pipeline(resolution=64).components


def test_latents_are_encoded_once_and_memory_mapped(folder, cache):
    src = mdata.FolderSource(*folder)
    vae = _pipe_parts()["vae"]
    before = mdata.IMAGES_READ[src.id]
    a = training.latent_data(vae, src, resolution=64, progress=False)
    assert mdata.IMAGES_READ[src.id] - before == 48
    b = training.latent_data(vae, src, resolution=64, progress=False)
    assert mdata.IMAGES_READ[src.id] - before == 48  # the second call read no image
    assert isinstance(b.latents, training.LatentArray) and isinstance(b.latents._a, np.memmap)
    assert torch.equal(a.latent_batch(slice(0, 48)), b.latent_batch(slice(0, 48)))
    assert a.latents.shape == (48, 4, 8, 8)
    with torch.no_grad():
        x, _ = src.load(0, 2, resolution=64)
        z = vae.encode(x * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(a.latent_batch([0, 1]), z, atol=1e-5)
    c = training.latent_data(vae, src, resolution=128, progress=False)  # another resolution: another cache entry
    assert c.latents.shape == (48, 4, 16, 16) and mdata.IMAGES_READ[src.id] - before == 48 + 2 + 48


def test_hf_dataset_saved_to_disk_and_imagefolder(tmp_path, folder):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    images, captions = folder
    names = sorted(p.name for p in images.iterdir())[:6]
    caps = dict(r.split(",", 1) for r in captions.read_text().splitlines()[1:])
    ds = datasets.Dataset.from_dict({"img": [Image.open(images / n) for n in names],
                                     "caption": [[caps[n], "x " + caps[n]] for n in names]})
    ds = ds.cast_column("img", datasets.Image())
    ds.save_to_disk(str(tmp_path / "saved"))
    src = mdata.HFSource(tmp_path / "saved", image_column="img", text_column="caption")
    x, c = src.load(1, 3, resolution=32)
    assert len(src) == 6 and x.shape == (2, 3, 32, 32) and c == [caps[names[1]], caps[names[2]]]
    assert src.captions_of(0) == [caps[names[0]], "x " + caps[names[0]]]
    with pytest.raises(ValueError, match="no column 'text'"):
        mdata.HFSource(tmp_path / "saved", image_column="img")
    imf = tmp_path / "imagefolder"
    imf.mkdir()
    for n in names:
        shutil.copy(images / n, imf / n)
    (imf / "metadata.csv").write_text("file_name,text\n" + "".join(f"{n},{caps[n]}\n" for n in names))
    src = mdata.HFSource(imf)
    assert len(src) == 6 and sorted(src.captions_of(i)[0] for i in range(6)) == sorted(caps[n] for n in names)


def test_prompt_files_in_every_format(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n\n a blue square \n")
    assert jobdata.read_prompts(tmp_path / "p.txt") == ["a red circle", "a blue square"]
    (tmp_path / "p.csv").write_text("id,caption\n1,a red circle\n2,a green star\n")
    assert jobdata.read_prompts(tmp_path / "p.csv") == ["a red circle", "a green star"]
    (tmp_path / "p.json").write_text(json.dumps(["one", "two"]))
    assert jobdata.read_prompts(tmp_path / "p.json") == ["one", "two"]
    (tmp_path / "r.json").write_text(json.dumps([{"Prompt": "x", "Category": "c"}]))  # PartiPrompts' columns
    assert jobdata.read_prompts(tmp_path / "r.json") == ["x"]
    (tmp_path / "c.json").write_text(json.dumps({"images": [], "annotations": [{"image_id": 1, "caption": "cap"}]}))
    assert jobdata.read_prompts(tmp_path / "c.json") == ["cap"]
    with pytest.raises(ValueError, match="prompts.column"):
        jobdata.read_prompts(tmp_path / "p.csv", "nope")


# ------------------------------------------------------------------------------------------------ objectives
def test_v_prediction_target_and_min_snr_weights():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    t = torch.tensor([10, 500, 990])
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = training.prediction_target(sched, x0, eps, t)
    assert torch.allclose(v, a.sqrt() * eps - (1 - a).sqrt() * x0, atol=1e-6)  # Salimans & Ho 2022
    snr = (a / (1 - a)).flatten()
    w_eps = training.min_snr_weight(sched.alphas_cumprod, t, 5.0, "epsilon")
    w_v = training.min_snr_weight(sched.alphas_cumprod, t, 5.0, "v_prediction")
    assert torch.allclose(w_eps, snr.clamp(max=5) / snr) and torch.allclose(w_v, snr.clamp(max=5) / (snr + 1))
    assert w_v[0] < 1 and torch.allclose(w_v[2], snr[2] / (snr[2] + 1))  # low noise clipped; high noise ~ SNR


def test_sdxl_conditioning_has_both_encoders_pooled_and_time_ids():
    from ablations.conditioning import PromptEncoder
    from tiny_sd.testing import random_sdxl_pipeline

    pipe = random_sdxl_pipeline()
    enc = PromptEncoder(pipe, 64)
    states, added = enc(["a red circle", ""])
    L = pipe.tokenizer.model_max_length
    assert states.shape == (2, L, 64) and added["text_embeds"].shape == (2, pipe.text_encoder_2.config.projection_dim)
    assert added["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * 2
    with torch.no_grad():  # the pipeline's own conditioning: penultimate states of both encoders
        ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=L, return_tensors="pt").input_ids
        h1 = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        h2 = pipe.text_encoder_2(ids, output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(states[:1], torch.cat([h1, h2], -1), atol=1e-5)
    data = training.LatentData(torch.randn(3, 4, 16, 16), None, ["a red circle", "a blue square", ""])
    dl = scoring.denoising_loss(pipe.unet, enc, data, scheduler_config=pipe.scheduler.config)
    assert dl.shape == (3,) and np.isfinite(dl).all()


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_autocast_training_keeps_float32_master_weights(precision):
    from ablations.conditioning import PromptEncoder
    from tiny_sd.testing import random_sd15_pipeline

    pipe = random_sd15_pipeline(resolution=64)
    unet = pipe.unet.float().train()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    data = training.LatentData(torch.randn(8, 4, 8, 8), None, ["a red circle"] * 8)
    unet.enable_gradient_checkpointing()
    config = training.TrainConfig(steps=2, batch_size=2, ema_decay=None, warmup=0, precision=precision)
    out = training.train_unet(unet, pipe.text_encoder, data, config, progress=False, encode=PromptEncoder(pipe, 64),
                              scheduler_config=pipe.scheduler.config)
    assert out["steps"] == 2 and all(np.isfinite(out["loss"]))
    assert all(p.dtype == torch.float32 for p in unet.parameters())
    assert any(not torch.equal(before[k], v) for k, v in unet.state_dict().items())


# ------------------------------------------------------------------------------------------------ the job
def test_job_trains_scores_and_samples_from_the_folder_only(sd15_128_dir, folder, cache, tmp_path, monkeypatch):
    """A finetune job on the folder: shapes are never rendered (the world is patched to raise), the folder's images
    are read, training and held-out rows are the split's, the prompts are held-out captions, the reference is the
    held-out split, everything at the data's 128 px."""
    from tiny_sd import shapes

    def no_shapes(*a, **k):
        raise AssertionError("the shapes world was used")

    monkeypatch.setattr(shapes, "batch", no_shapes)
    monkeypatch.setattr(shapes, "sample", no_shapes)
    cfg = _cfg(*_folder_args(sd15_128_dir, *folder, "protocol=finetune", "budget.n_images=4", "budget.train_data=20"))
    src = mdata.FolderSource(*folder)
    train, held = mdata.split_heldout(src, 24)
    before = mdata.IMAGES_READ[src.id]
    r = job.run(cfg, tmp_path / "job")
    assert r["status"] == "ok", r.get("traceback")
    p = r["provenance"]
    assert p["data"]["train"] == jobdata.first(train, 20).id and p["data"]["train_images"] == 20
    assert p["data"]["heldout"] == held.id and p["data"]["resolution"] == 128 and p["train_steps"] == 2
    assert p["prompts"]["source"] == held.id and p["reference"]["dataset"] == held.id
    assert p["reference"]["resolution"] == 64  # the metrics' resolution (tiny_sd evaluator features)
    # reads: 20 training + 24 held-out latents + 8 reference + the floor's 4 draws of 4 (all from the folder)
    assert mdata.IMAGES_READ[src.id] - before == 20 + 24 + 8 + 16
    from PIL import Image

    assert Image.open(tmp_path / "job" / "samples.png").size == (4 * 128, 128)
    assert "eps-MSE, 24 held-out latents of " + held.id in p["denoising_loss"]
    assert {"colour_acc", "fd_evaluator"} <= set(r["metrics"])  # shapes-world captions: the evaluator applies


def test_prompts_file_replaces_the_held_out_captions(sd15_128_dir, folder, cache, tmp_path):
    pf = tmp_path / "prompts.txt"
    pf.write_text("a red circle\na blue square\na green triangle\na yellow star\na red square\n")
    cfg = _cfg(*_folder_args(sd15_128_dir, *folder, f"prompts.file={pf}", "budget.n_images=4", "image_metrics=false"))
    seen = {}
    real = job.sampling.sample_batches

    def spy(pipe, unet, prompts, *a, **k):
        seen["prompts"] = list(prompts)
        return real(pipe, unet, prompts, *a, **k)

    import pytest as _p

    with _p.MonkeyPatch.context() as m:
        m.setattr(job.sampling, "sample_batches", spy)
        r = job.run(cfg, tmp_path / "job")
    assert r["status"] == "ok", r.get("traceback")
    assert seen["prompts"] == pf.read_text().splitlines()[:4]
    assert r["provenance"]["prompts"]["n"] == 4 and r["provenance"]["prompts"]["n_in_file"] == 5
    assert r["provenance"]["prompts"]["source"] == str(pf.resolve())


def test_v_prediction_model_job(cache, folder, tmp_path_factory, tmp_path):
    from tiny_sd.testing import save_random_pipeline

    model = save_random_pipeline(tmp_path_factory.mktemp("v") / "sd21v", layout="sd21v_128")
    cfg = _cfg(*_folder_args(model, *folder, "protocol=finetune", "image_metrics=false", "budget.n_images=2",
                             "budget.sample_batch=2"))
    r = job.run(cfg, tmp_path / "job")
    assert r["status"] == "ok", r.get("traceback")
    assert r["provenance"]["denoising_loss"].startswith("unweighted v-MSE")


def _cli(*args, timeout=300, launcher=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNET_LAB_CACHE": os.environ.get("UNET_LAB_CACHE", "")}
    cmd = (launcher or [sys.executable, "-m", "ablations"]) + list(args)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_real_model_with_shapes_and_bad_data_are_refused_before_compute(sd15_128_dir, tmp_path):
    p = _cli(f"model.path={sd15_128_dir}", "budget=smoke", f"hydra.run.dir={tmp_path / 'a'}")
    assert p.returncode == 2 and "generates 128-px images but data=shapes" in p.stderr, p.stderr[-2000:]
    assert "data=folder data.root=DIR data.captions=FILE" in p.stderr and not (tmp_path / "a" / "result.json").exists()
    p = _cli(f"model.path={sd15_128_dir}", "data=folder", f"data.root={tmp_path / 'nope'}", "data.captions=x.csv",
             f"hydra.run.dir={tmp_path / 'b'}")
    assert p.returncode == 2 and "does not exist" in p.stderr and len(p.stderr.strip().splitlines()) == 2, p.stderr


@pytest.mark.slow
def test_norms_sweep_on_the_folder_one_and_two_processes_agree(sd15_128_dir, coco_folder, tmp_path):
    """`sweep=norms budget=smoke` on the SD 1.5-structure model and a COCO-JSON folder, end to end; then two
    variants under `torchrun --nproc_per_node 2`, and one as a submitit job of two tasks, give the same
    result.json numbers as one process."""
    env_cache = tmp_path / "cache"
    os.environ["UNET_LAB_CACHE"] = str(env_cache)
    try:
        args = _folder_args(sd15_128_dir, *coco_folder, "sweep=norms", "seed=0")
        p = _cli(*args, f"hydra.sweep.dir={tmp_path / 'one'}", timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        res = {f.parent.name: json.loads(f.read_text()) for f in (tmp_path / "one" / "jobs").glob("*/result.json")}
        assert len(res) == 7 and all(r["status"] == "ok" for r in res.values()), \
            {k: r["error"] for k, r in res.items()}
        assert all(r["provenance"]["data"]["resolution"] == 128 and r["provenance"]["train_steps"] == 2
                   for r in res.values())
        assert (tmp_path / "one" / "report" / "index.html").exists()
        two = ["groupnorm", "rmsnorm"]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "ablations"]
        p = _cli(*args, f"variant={','.join(two)}", f"hydra.sweep.dir={tmp_path / 'two'}", timeout=900,
                 launcher=launcher)
        assert p.returncode == 0, p.stderr[-3000:]
        for v in two:
            a = res[f"{v}__seed0"]
            b = json.loads((tmp_path / "two" / "jobs" / f"{v}__seed0" / "result.json").read_text())
            assert b["status"] == "ok" and b["provenance"]["ranks"] == 2 and a["provenance"]["ranks"] == 1
            assert b["metrics"] == a["metrics"] and b["ci"] == a["ci"], v
            assert (tmp_path / "two" / "jobs" / f"{v}__seed0" / "samples.png").read_bytes() == \
                (tmp_path / "one" / "jobs" / f"{v}__seed0" / "samples.png").read_bytes()
        # the tasks of one submitit job (hydra.launcher.tasks_per_node=2) take their ranks from submitit
        p = _cli("-m", *args, "variant=groupnorm", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                 f"hydra.sweep.dir={tmp_path / 'submitit'}", timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        c = json.loads((tmp_path / "submitit" / "jobs" / "groupnorm__seed0" / "result.json").read_text())
        assert c["provenance"]["ranks"] == 2 and c["metrics"] == res["groupnorm__seed0"]["metrics"]
    finally:
        os.environ.pop("UNET_LAB_CACHE", None)


@pytest.mark.slow
def test_coco_protocol_with_a_random_inception_of_the_real_architecture(sd15_128_dir, folder, cache, tmp_path):
    """metrics=coco: FID/KID through the real Inception code path (random weights from a local file: numbers
    meaningless), at 256 px with the resize recorded; without the weights the command is refused."""
    from metrics.inception import save_random_inception

    weights = save_random_inception(tmp_path / "inception.pth")
    cfg = _cfg(*_folder_args(sd15_128_dir, *folder, "metrics=coco", f"metrics.fid.weights={weights}",
                             "metrics.clip.model=null", "budget.n_images=4"))
    r = job.run(cfg, tmp_path / "job")
    assert r["status"] == "ok", r.get("traceback")
    assert {"fid", "kid_inception"} <= set(r["metrics"]) and "colour_acc" not in r["metrics"]
    p = r["provenance"]
    assert p["primary_metric"] == "fid" and p["resize"].startswith("bicubic-antialias to 256px")
    assert p["extractors"]["inception"]["path"] == str(weights) and not p["extractors"]["inception"]["official_weights"]
    q = _cli(*_folder_args(sd15_128_dir, *folder, "metrics=coco", f"metrics.fid.weights={tmp_path / 'missing.pth'}",
                           "metrics.clip.model=null", f"hydra.run.dir={tmp_path / 'x'}"))
    assert q.returncode == 2 and "metrics.primary='fid' cannot be computed" in q.stderr, q.stderr[-2000:]


def test_mixed_size_images_are_each_resized_from_their_own_pixels(tmp_path):
    """COCO's images differ in size: each is centre-cropped and resized once, from its original pixels, as a
    generated image is (no detour through the batch's smallest common square)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    d = tmp_path / "mixed"
    d.mkdir()
    for i, (h, w) in enumerate([(480, 640), (300, 200), (256, 256)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"{i}.png")
    src = mdata.FolderSource(d)
    x, _ = src.load(0, 3, 128, "bicubic-antialias")
    for i in range(3):
        one = torch.from_numpy(np.asarray(Image.open(d / f"{i}.png"), dtype=np.float32) / 255).permute(2, 0, 1)
        assert torch.equal(x[i], mdata.resize_images(one[None], 128, "bicubic-antialias")[0])


def test_job_on_a_local_hf_dataset(sd15_128_dir, folder, cache, tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    images, captions = folder
    rows = [r.split(",", 1) for r in captions.read_text().splitlines()[1:]][:16]
    ds = datasets.Dataset.from_dict({"image": [Image.open(images / n) for n, _ in rows], "text": [c for _, c in rows]})
    ds.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "ds"))
    cfg = _cfg(f"model.path={sd15_128_dir}", "data=hf", f"data.path={tmp_path / 'ds'}", "data.heldout=4", "budget=smoke",
               "protocol=finetune", "budget.n_images=2", "budget.sample_batch=2", "image_metrics=false",
               "progress=false")
    r = job.run(cfg, tmp_path / "job")
    assert r["status"] == "ok", r.get("traceback")
    d = r["provenance"]["data"]
    assert d["heldout"].startswith("hf(") and d["train_images"] == 12 and d["heldout_images_for_loss"] == 4
    assert r["provenance"]["prompts"]["source"] == d["heldout"] and r["provenance"]["prompts"]["n"] == 2
