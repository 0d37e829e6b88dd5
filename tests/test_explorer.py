"""Explorer pages of probe runs (`reports.explorer`), clicked through in headless chromium (the `browser` fixture):
the displayed arrays are compared with the run's own files (heatmaps.npz, maps.csv, token_mass.csv, heads.csv)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from probes import heatmaps as hm
from reports import explorer

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "explorer.png"
PROMPT = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One attention run of the trained tiny_sd (4 DDIM steps: 4 of the 5 timestep bins visited)."""
    from foundation.loading import load_pipeline
    from probes.runner import run

    pipe = load_pipeline("tiny_sd", device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    out = tmp_path_factory.mktemp("attention")
    cfg = dict(model=dict(name="tiny_sd", path="tiny_sd", device="cpu", dtype="float32"), prompt=PROMPT, prompts=None,
               seed=0, sample_steps=4, guidance_scale=5.0, height=None, width=None, timestep_bins=5, out=str(out),
               probe=dict(name="attention", self_attention=[], mean_heads=False))
    run(cfg, pipe=pipe)
    return out


# -- the browser's side -------------------------------------------------------------------------------------
def _open(browser, page: Path, explorer_page: bool = True):
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(page.as_uri())
    if explorer_page:
        _ready(browser)


def _ready(browser):
    """Wait for the page's script to finish (body[data-ready]), then require that it succeeded."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(lambda d: d.find_element("tag name", "body").get_attribute("data-ready"))
    assert browser.find_element("tag name", "body").get_attribute("data-ready") == "true"


def _choose(browser, control: str, text: str | None = None, value: str | None = None):
    from selenium.webdriver.support.ui import Select

    sel = Select(browser.find_element("id", control))
    sel.select_by_visible_text(text) if text is not None else sel.select_by_value(value)


def _array(browser, which: str) -> np.ndarray:
    d = browser.execute_script(f"return explorer.{which}()")
    return np.asarray(d["values"], dtype=np.float64).reshape(d["h"], d["w"])


def _bars(browser, chart: str) -> list[float]:
    return [float(b.get_attribute("data-value"))
            for b in browser.find_elements("css selector", f"#{chart} rect.bar")]


def _errors(browser) -> list[dict]:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def _broken_images(browser) -> list[str]:
    return browser.execute_script(
        "return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 40))")


def _canvas(browser) -> np.ndarray:
    d = browser.execute_script("const c = document.getElementById('heatmap');"
                               "return {h: c.height, w: c.width, "
                               "v: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)}")
    return np.asarray(d["v"], dtype=np.float64).reshape(d["h"], d["w"], 4)


def _overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """What the canvas should show: the image under the heatmap in the figures' colour map."""
    lut = np.asarray(explorer._lut(explorer.HEATMAP_CMAP), dtype=np.float64).reshape(256, 3)
    return (1 - explorer.ALPHA) * image + explorer.ALPHA * lut[np.clip(np.rint(heat * 255), 0, 255).astype(int)]


def _layers(run_dir) -> list[str]:
    return list(dict.fromkeys(pd.read_csv(run_dir / "maps.csv")["layer"]))


def _bin_label(row) -> str:
    return f"t {row.t_lo:g}–{row.t_hi:g}"


# -- tests ----------------------------------------------------------------------------------------------------
def test_quantisation_and_the_size_plan_of_an_sd15_shaped_run():
    rng = np.random.default_rng(0)
    a = rng.random((8, 8)) * 1e-3 + 0.2  # a near-constant map keeps its own 256 levels
    q, lo, step = explorer.quantise(a)
    assert q.dtype == np.uint8 and q.min() == 0 and q.max() == 255
    assert np.abs(lo + step * q - a).max() <= step / 2 + 1e-12
    assert explorer.quantise(np.full((2, 2), 3.0))[0].max() == 0
    sd15 = [dict(h=s, w=s, heads=8) for s in [64] * 5 + [32] * 5 + [16] * 5 + [8]]
    full = explorer.plan(sd15, 10, 5, (64, 64), budget=10**9)
    kept, size = explorer.plan(sd15, 10, 5, (64, 64))  # the numbers the module docstring states
    assert full == ([(8, 8), (16, 16), (32, 32), (64, 64)], 4_017_920)
    assert kept == [(8, 8), (16, 16), (32, 32)] and size == 2_379_520 <= explorer.BUDGET


def test_the_explorer_maps_give_heatmaps_npz_and_the_page_holds_what_the_plan_says(run_dir):
    import base64
    import json
    import re

    page = (run_dir / "explorer.html").read_text()
    meta = json.loads(re.search(r'<script id="explorer-data" type="application/json">(.*?)</script>', page).group(1))
    labels = [e["label"] for e in meta["entries"]]
    assert labels == ["⟨start⟩", "a", "red", "circle", "left", "of", "blue", "square", "⟨end⟩", "⟨padding⟩"]
    kept, size = explorer.plan(meta["layers"], len(labels), len(meta["bins"]) - 1, meta["grid"])
    assert len(base64.b64decode(meta["blob"])) == size and len(page) < 400_000
    npz = np.load(run_dir / "heatmaps.npz")
    codes = np.frombuffer(base64.b64decode(meta["blob"]), dtype=np.uint8)
    for word in ("circle", "square"):  # the stored global map, upsampled and normalised as word_heatmaps does it
        off, h, w, lo, step = meta["maps"][f"g/{labels.index(word)}/0"]
        grid_map = torch.tensor(lo + step * codes[off:off + h * w].astype(np.float64)).reshape(1, h, w)
        heat = hm.normalise(hm.upsample(grid_map, npz[word].shape, clamp=False))[0].numpy()
        assert np.abs(heat - npz[word]).max() < 0.01


def test_all_layers_and_timesteps_reproduce_heatmaps_npz_on_the_canvas(browser, run_dir):
    _open(browser, run_dir / "explorer.html")
    npz = np.load(run_dir / "heatmaps.npz")
    image = np.asarray(Image.open(run_dir / "image.png").convert("RGB"), dtype=np.float64)
    assert browser.find_element("id", "word").get_attribute("value") == "1"  # the first word, "a"
    pixels = {}
    for word in ("circle", "square", "a"):
        _choose(browser, "word", text=word)
        shown = _array(browser, "shown")
        assert shown.shape == npz[word].shape and np.abs(shown - npz[word]).max() < 0.01, word
        pixels[word] = _canvas(browser)
        assert np.abs(pixels[word][..., :3] - _overlay(image, npz[word])).mean() < 1.0
    assert np.abs(pixels["circle"] - pixels["square"]).mean() > 1.0  # another word, another picture
    assert _broken_images(browser) == [] and _errors(browser) == []


def test_a_layer_and_a_timestep_bin_show_the_maps_of_maps_csv(browser, run_dir):
    maps = pd.read_csv(run_dir / "maps.csv")
    layers = _layers(run_dir)
    word = maps[(maps["word"] == "circle") & (maps["image_index"] == 0)]
    bins = word.drop_duplicates("t_bin").sort_values("t_bin", ascending=False)  # the page orders noisy -> clean
    row = bins.iloc[1]
    _open(browser, run_dir / "explorer.html")
    _choose(browser, "word", text="circle")
    _choose(browser, "bin", text=_bin_label(row))
    b = browser.find_element("id", "bin").get_attribute("value")
    for j in (0, layers.index(word[word["resolution"] == "8x8"]["layer"].iloc[0])):
        _choose(browser, "layer", value=str(j))
        raw = _array(browser, "raw")
        want = word[(word["layer"] == layers[j]) & (word["t_bin"] == row.t_bin)].iloc[0]
        assert raw.shape == tuple(int(s) for s in want.resolution.split("x"))
        assert raw.mean() == pytest.approx(want["mean"], rel=5e-3) and raw.max() == pytest.approx(want["max"], rel=5e-3)
        assert browser.find_element("id", "heatmap").get_attribute("data-selection") == f"3|{j}|{b}|mean"
    per_layer = word[word["t_bin"] == row.t_bin].set_index("layer").loc[layers, "mean"].to_numpy()
    assert np.allclose(_bars(browser, "profile-layer"), per_layer, rtol=5e-3)
    per_bin = word[word["layer"] == layers[j]].set_index("t_bin").loc[bins["t_bin"], "mean"].to_numpy()
    assert np.allclose(_bars(browser, "profile-bin"), per_bin, rtol=5e-3)
    browser.find_element("css selector", '#profile-layer g[data-key="2"] rect.hit').click()  # a bar selects its layer
    assert browser.find_element("id", "layer").get_attribute("value") == "2"
    assert _array(browser, "raw").mean() == pytest.approx(
        word[(word["layer"] == layers[2]) & (word["t_bin"] == row.t_bin)]["mean"].iloc[0], rel=5e-3)
    first = browser.find_elements("css selector", "#bin option")[1].get_attribute("value")  # the noisiest bin
    browser.find_element("css selector", f'#profile-bin g[data-key="{first}"] rect.hit').click()
    assert browser.find_element("id", "bin").get_attribute("value") == first
    assert _array(browser, "raw").mean() == pytest.approx(
        word[(word["layer"] == layers[2]) & (word["t_bin"] == bins.iloc[0].t_bin)]["mean"].iloc[0], rel=5e-3)
    assert _errors(browser) == []


def test_heads_resolutions_and_special_tokens(browser, run_dir):
    maps, mass = pd.read_csv(run_dir / "maps.csv"), pd.read_csv(run_dir / "token_mass.csv")
    heads = pd.read_csv(run_dir / "heads.csv").groupby("layer")["head"].nunique()
    layers = _layers(run_dir)
    two = next(j for j, l in enumerate(layers) if heads[l] == 2)
    _open(browser, run_dir / "explorer.html")
    _choose(browser, "word", text="square")
    _choose(browser, "layer", value=str(two))
    head = browser.find_element("id", "head")
    assert head.is_enabled() and [o.text for o in head.find_elements("tag name", "option")] == [
        "mean of 2", "head 0", "head 1"]
    mean = _array(browser, "raw")
    per_head = []
    for k in (0, 1):
        _choose(browser, "head", value=str(k))
        assert not browser.find_element("id", "bin").is_enabled()  # per-head maps cover all timesteps
        per_head.append(_array(browser, "raw"))
    assert not np.allclose(per_head[0], per_head[1])
    assert np.abs((per_head[0] + per_head[1]) / 2 - mean).max() < 0.01 * mean.max()
    _choose(browser, "layer", value=str(next(j for j, l in enumerate(layers) if heads[l] == 1)))
    assert not head.is_enabled() and browser.find_element("id", "bin").is_enabled()

    row = maps[maps["image_index"] == 0].drop_duplicates("t_bin").iloc[0]
    _choose(browser, "bin", text=_bin_label(row))
    _choose(browser, "layer", value="res:8x8")  # each (layer, head) pair weighs the same
    sq = maps[(maps["word"] == "square") & (maps["t_bin"] == row.t_bin) & (maps["resolution"] == "8x8")]
    want = (sq["mean"] * sq["layer"].map(heads)).sum() / sq["layer"].map(heads).sum()
    assert _array(browser, "raw").mean() == pytest.approx(want, rel=5e-3)
    _choose(browser, "layer", value="0")
    at = mass[(mass["layer"] == layers[0]) & (mass["t_bin"] == row.t_bin) & (mass["image_index"] == 0)]
    for label, part in (("⟨start⟩", "start"), ("⟨end⟩", "end"), ("⟨padding⟩", "padding")):
        _choose(browser, "word", text=label)
        share = at[at["part"] == part].iloc[0]
        assert _array(browser, "raw").mean() == pytest.approx(share["share"] / share["n_tokens"], rel=5e-3), label
    _choose(browser, "word", text="circle")
    _choose(browser, "layer", value="all")
    _choose(browser, "bin", value="0")
    assert _errors(browser) == [] and _broken_images(browser) == []
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))  # README's picture of the explorer


@pytest.mark.parametrize("probe,row,measures", [("timestep", "block", ("temb_rel_norm", "sens_zero", "sens_swap")),
                                                ("skips", "skip", ("norm_ratio", "delta_zero"))])
def test_timestep_and_skips_pages_switch_measure_tables(browser, tmp_path, probe, row, measures):
    rng = np.random.default_rng(0)
    names = ["down_blocks.0.resnets.0", "mid_block.resnets.1", "up_blocks.1.resnets.2"]
    table = pd.DataFrame([{row: n, "timestep": t, "metric": m, "value": float(rng.random())}
                          for m in measures for n in names for t in (999, 0, 500)])
    page = tmp_path / "explorer.html"
    explorer.table_page(table, probe, page, files=[f"{probe}.csv"], prompt=PROMPT)
    _open(browser, page)
    for m in (measures[1], measures[0]):
        _choose(browser, "measure", value=m)
        panels = browser.find_elements("css selector", ".measure-panel")
        assert [p.get_attribute("data-measure") for p in panels if p.is_displayed()] == [m]
        shown = next(p for p in panels if p.is_displayed())
        heads = [th.text for th in shown.find_elements("css selector", "thead th")][1:]
        assert heads == ["t = 0", "t = 500", "t = 999"]
        want = table[table["metric"] == m].pivot(index=row, columns="timestep", values="value").loc[names]
        for tr, (name, values) in zip(shown.find_elements("css selector", "tbody tr"), want.iterrows()):
            assert tr.find_element("tag name", "th").text == name
            assert np.allclose([float(td.text) for td in tr.find_elements("tag name", "td")], values, rtol=1e-3)
    assert _errors(browser) == []


def test_the_sweep_report_links_the_probe_runs_it_contains(browser, run_dir, tmp_path):
    from reports import build_report
    from reports.html import probe_runs

    assert probe_runs(tmp_path, tmp_path) == []  # no probe run: nothing to list
    sweep = tmp_path / "sweep"
    shutil.copytree(run_dir, sweep / "probes" / "attention")
    _open(browser, build_report(sweep)["html"], explorer_page=False)
    links = browser.find_elements("css selector", "#probe-runs a")
    assert [a.text for a in links] == ["probes/attention"]
    links[0].click()
    _ready(browser)
    assert browser.current_url.endswith("probes/attention/explorer.html") and _errors(browser) == []
