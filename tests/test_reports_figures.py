"""Figures: written as PDF + 300-dpi PNG at the stated paper sizes, from the tidy probe and summary tables."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from reports import figures, figsize, save_figure
from reports.style import DPI, ONE_COLUMN_IN, TWO_COLUMN_IN


def _check_saved(fig, stem, width_in):
    size = fig.get_size_inches()
    assert size[0] == pytest.approx(width_in)
    pdf, png = save_figure(fig, stem)
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000
    with Image.open(png) as im:
        assert im.size == (round(size[0] * DPI), round(size[1] * DPI))   # exactly inches x 300
        assert np.asarray(im.convert("L")).std() > 1.0                   # something was drawn
    return pdf, png


def _maps_df():
    rng = np.random.default_rng(0)
    rows = []
    for ti, word in enumerate(["red", "circle", "left", "blue", "square"], start=2):
        for layer, res in [("down_blocks.0.attentions.0", 16), ("mid_block.attentions.0", 4),
                           ("up_blocks.1.attentions.0", 16)]:
            for b, (lo, hi) in enumerate([(0, 333), (333, 666), (666, 1000)]):
                rows.append(dict(word=word, token_index=ti, layer=layer, resolution=res, t_bin=b, t_lo=lo, t_hi=hi,
                                 mean=rng.random(), max=rng.random(), entropy=rng.random()))
    return pd.DataFrame(rows)


def _long_df(key, names, metrics):
    rng = np.random.default_rng(1)
    return pd.DataFrame([{key: n, "timestep": t, "metric": m, "value": rng.normal()}
                         for n in names for t in (999, 749, 499, 249, 1) for m in metrics])


def _summary():
    rows = []
    for v, (fid, clip) in {"baseline": (20, 0.30), "no_norm": (24, 0.29), "ln": (22, 0.295)}.items():
        rows += [dict(variant=v, metric="fid", mean=fid, ci_lo=fid - 1, ci_hi=fid + 1, higher_is_better=False,
                      is_baseline=v == "baseline"),
                 dict(variant=v, metric="clip_score", mean=clip, ci_lo=clip - .004, ci_hi=clip + .004,
                      higher_is_better=True, is_baseline=v == "baseline")]
    return pd.DataFrame(rows)


def test_figsize_layouts():
    assert figsize("one") == (ONE_COLUMN_IN, 3.5 * 0.75)
    assert figsize("two", aspect=0.5) == (TWO_COLUMN_IN, 3.5)
    with pytest.raises(ValueError):
        figsize("three")


def test_attention_grid_non_square_image(tmp_path):
    img = (np.random.default_rng(0).random((48, 96, 3)) * 255).astype(np.uint8)
    maps = {"red": np.random.rand(48, 96), "circle": np.random.rand(24, 48)}     # lower-res map is stretched
    fig = figures.attention_grid(img, maps)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "red", "circle"]
    _check_saved(fig, tmp_path / "heatmaps", TWO_COLUMN_IN)
    with pytest.raises(ValueError, match="no heatmap"):
        figures.attention_grid(img, maps, words=["blue"])


def test_attention_breakdown_orders_words_and_bins(tmp_path):
    df = _maps_df()
    fig = figures.attention_breakdown(df.iloc[::-1])     # word and bin order come from token_index and t, not rows
    by_layer, by_t = [ax for ax in fig.axes if ax.get_title()]                   # the others are colour bars
    assert [t.get_text() for t in by_layer.get_yticklabels()] == ["red", "circle", "left", "blue", "square"]
    assert [t.get_text() for t in by_t.get_xticklabels()] == ["666–1000", "333–666", "0–333"]
    # A cell is the mean over the other axis of the table's values.
    want = df[(df.word == "circle") & (df.layer == "mid_block.attentions.0")]["mean"].mean()
    layers = [t.get_text() for t in by_layer.get_xticklabels()]
    assert layers == ["up.1.attn.0 16×16", "mid.attn.0 4×4", "down.0.attn.0 16×16"]   # site map short names
    assert by_layer.images[0].get_array()[1, layers.index("mid.attn.0 4×4")] == pytest.approx(want)
    _check_saved(fig, tmp_path / "breakdown", TWO_COLUMN_IN)
    with pytest.raises(ValueError, match="missing columns"):
        figures.attention_breakdown(df.drop(columns=["t_bin"]))


def test_timestep_and_skip_heatmaps(tmp_path):
    ts = _long_df("block", ["down.0", "down.1", "mid", "up.0"], ["temb_rel_norm", "sens_zero", "sens_swap"])
    fig = figures.timestep_heatmap(ts)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["temb_rel_norm", "sens_zero", "sens_swap"]
    _check_saved(fig, tmp_path / "timestep", TWO_COLUMN_IN)
    sk = _long_df("skip", ["skip0", "skip1", "skip2"], ["norm_ratio", "delta_zero"])
    fig = figures.skip_heatmap(sk, metrics=["delta_zero"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["999", "749", "499", "249", "1"]
    _check_saved(fig, tmp_path / "skips", TWO_COLUMN_IN)
    with pytest.raises(ValueError, match="not in the table"):
        figures.skip_heatmap(sk, metrics=["hf_skip"])


def test_metric_bars_and_tradeoff(tmp_path):
    s = _summary()
    fig = figures.metric_bars(s)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["fid ↓", "clip_score ↑"]
    _check_saved(fig, tmp_path / "metrics", TWO_COLUMN_IN)
    fig = figures.tradeoff(s)
    assert fig.axes[0].get_xlabel() == "fid ↓" and fig.axes[0].get_ylabel() == "clip_score ↑"
    _check_saved(fig, tmp_path / "tradeoff", ONE_COLUMN_IN)
    with pytest.raises(ValueError, match="CLIP"):
        figures.tradeoff(s[s.metric == "fid"])


def test_sample_grid_from_paths(tmp_path):
    paths = {}
    for v in ("baseline", "no_norm"):
        paths[v] = tmp_path / f"{v}.png"
        Image.fromarray((np.random.default_rng(0).random((32, 128, 3)) * 255).astype(np.uint8)).save(paths[v])
    fig = figures.sample_grid(paths)
    assert [ax.get_ylabel() for ax in fig.axes] == ["baseline", "no_norm"]
    _check_saved(fig, tmp_path / "samples", TWO_COLUMN_IN)


def _overlapping_xticklabels(fig) -> list[str]:
    """Titles of axes whose x tick labels overlap once the figure is laid out as it is saved."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    bad = []
    for ax in fig.axes:
        boxes = [t.get_window_extent(r) for t in ax.get_xticklabels() if t.get_text()]
        if any(a.overlaps(b) for a, b in zip(boxes, boxes[1:])):
            bad.append(ax.get_title())
    return bad


@pytest.mark.parametrize("n_bins", [3, 5, 10])
def test_breakdown_tick_labels_never_overlap(n_bins):
    """Five '800–1000'-style bins in the narrow timestep panel overlapped when rotation went by label count."""
    rows = []
    for w, word in enumerate(["a", "red", "circle", "left", "of", "blue", "square"]):
        for layer in ["down_blocks.0.attentions.0", "mid_block.attentions.0", "up_blocks.2.attentions.1"]:
            for b in range(n_bins):
                lo, hi = 1000 * (n_bins - b - 1) // n_bins, 1000 * (n_bins - b) // n_bins
                rows.append(dict(image_index=0, word=word, word_index=w, token_index=w + 1, n_tokens=1, layer=layer,
                                 resolution="8x8", t_bin=b, t_lo=lo, t_hi=hi, mean=0.1 * w, max=0.2, entropy=0.5,
                                 head_entropy=1.0))
    fig = figures.attention_breakdown(pd.DataFrame(rows))
    assert _overlapping_xticklabels(fig) == []
    # short labels that fit stay horizontal (rotation is not applied blindly)
    fig2 = figures.timestep_heatmap(_long_df("block", ["down.0", "mid"], ["temb_rel_norm"]))
    assert _overlapping_xticklabels(fig2) == []


def _text_collisions(fig) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts (labels, legend entries, ticks, titles) whose rendered boxes overlap."""
    from matplotlib.text import Text

    from reports.figure_parts import overlapping_pairs

    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    boxes = [Text.get_window_extent(t, r) for t in texts]              # an annotation's text, not its leader line
    return [(texts[i].get_text(), texts[j].get_text()) for i, j in overlapping_pairs(boxes)]


def _tradeoff_summary(points: dict) -> pd.DataFrame:
    rows = []
    for i, (v, (fd, clip)) in enumerate(points.items()):
        rows += [dict(variant=v, metric="fd_evaluator", mean=fd, ci_lo=fd - 3, ci_hi=fd + 3, higher_is_better=False,
                      is_baseline=i == 0),
                 dict(variant=v, metric="clip_evaluator", mean=clip, ci_lo=clip - .01, ci_hi=clip + .01,
                      higher_is_better=True, is_baseline=i == 0)]
    return pd.DataFrame(rows)


def test_tradeoff_labels_never_collide(tmp_path):
    # the norms sweep's picture: layernorm, rmsnorm and layernorm2d almost on one point
    spread = {"groupnorm": (200, 0.78), "batchnorm": (260, 0.70), "instancenorm": (400, 0.40),
              "layernorm": (231, 0.752), "rmsnorm": (232, 0.751), "layernorm2d": (233, 0.753), "none": (300, 0.6)}
    fig = figures.tradeoff(_tradeoff_summary(spread))
    assert _text_collisions(fig) == []
    names = {t.get_text() for t in fig.axes[0].texts} | {t.get_text() for l in fig.legends for t in l.get_texts()}
    assert names == set(spread)                                      # every variant is named, once
    _check_saved(fig, tmp_path / "tradeoff", ONE_COLUMN_IN)          # one column wide, as before
    # points far apart are labelled beside themselves (no legend), and what was checked is what is saved
    apart = {"a": (0, 0.0), "b": (10, 1.0), "c": (20, 0.0), "d": (30, 1.0)}
    fig = figures.tradeoff(_tradeoff_summary(apart))
    assert not fig.legends and sorted(t.get_text() for t in fig.axes[0].texts) == ["a", "b", "c", "d"]
    assert _text_collisions(fig) == []
    _check_saved(fig, tmp_path / "apart", ONE_COLUMN_IN)
    # a point sitting on another's label spot pushes that label elsewhere instead of under it
    fig = figures.tradeoff(_tradeoff_summary({"a": (0, 0.0), "b": (0.3, 0.01), "c": (20, 1.0)}))
    assert _text_collisions(fig) == []


def test_place_labels_reports_when_nothing_fits():
    import matplotlib.pyplot as plt
    from reports.figure_parts import place_labels

    fig, ax = plt.subplots(figsize=(1.0, 1.0))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    assert place_labels(ax, [(0.5, 0.5)] * 6, [f"variant {i}" for i in range(6)], ["k"] * 6) is None
    assert len(ax.texts) == 0                                      # all or nothing: the caller draws a legend
    plt.close(fig)


def test_metric_bars_draw_the_floor_as_a_reference_line():
    s = _summary()
    fig = figures.metric_bars(s, floors={"fid": 15.0})
    fid_ax = next(ax for ax in fig.axes if ax.get_title() == "fid ↓")
    dotted = [l for l in fid_ax.get_lines() if l.get_linestyle() == ":"]
    assert len(dotted) == 1 and list(dotted[0].get_xdata()) == [15.0, 15.0]
    clip_ax = next(ax for ax in fig.axes if ax.get_title() == "clip_score ↑")
    assert not [l for l in clip_ax.get_lines() if l.get_linestyle() == ":"]
    assert fig.get_size_inches()[0] == pytest.approx(TWO_COLUMN_IN)


def test_iou_layers_print_short_names():
    rows = []
    for b in ["all", "layer=down_blocks.0.attentions.0.transformer_blocks.0.attn2",
              "layer=up_blocks.2.attentions.1.transformer_blocks.0.attn2"]:
        for wt in ("colour", "shape"):
            rows.append(dict(tau=0.4, word_type=wt, breakdown=b, source="generated", miou=0.4, ci_lo=0.3, ci_hi=0.5,
                             auroc=0.9, auroc_ci_lo=0.85, auroc_ci_hi=0.95))
    fig = figures.iou_layers(pd.DataFrame(rows))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["all", "down.0.attn.0", "up.2.attn.1"]
    assert _text_collisions(fig) == []
