"""``explorer.html``: one self-contained page per probe run to move through what the run recorded.

Attention runs (`attention_page`): the image with the selected word's (or start, end, padding token's) heatmap
overlaid, selectable by layer or resolution, timestep bin and head, beside the word's per-layer and per-timestep
profiles. Timestep and skips runs (`table_page`): block x timestep tables of ``timestep.csv`` / ``skips.csv``, one
per measure, picked by a selector. Pages are rendered from ``explorer_template.html`` with jinja2; data and image
are embedded, so the page works from ``file://`` with no network and no server.

The attention maps (`probes.explorer_maps`) are embedded at their native grids, each quantised to uint8 with its own
offset and step (error <= step / 2 = range / 510), base64'd; the browser upsamples them bicubically on a canvas as
torch does (align_corners=False, A = -0.75), so "all layers, all timesteps" is the word's ``heatmaps.npz`` map up to
quantisation. Per entry (each word, start, end, padding) the page holds (bins + 1) x (common grid + every layer's
grid) maps plus the per-head maps of the multi-head layers over all timesteps, these while the maps fit `BUDGET`
(`plan`). An SD1.5-shaped run at 512 px (16 attn2 layers: 5 at 64x64, 5 at 32x32, 5 at 16x16, 1 at 8x8; 8 heads;
5 bins) with a seven-word prompt (10 entries) holds 4.02 MB of maps in full; over the budget, its 64x64 layers'
per-head maps are left out: 2.38 MB of maps, a 3.3 MB page with their index, plus the image (each further word
adds 0.25 MB). Per-timestep per-head maps would be 5x the per-head part, so heads are kept over all timesteps only.
tiny_sd (16x16/8x8/4x4 grids, 1/2/4 heads) with the same prompt: about 0.2 MB.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import jinja2
import matplotlib
import numpy as np
import pandas as pd
from PIL import Image

from .style import HEATMAP_CMAP, SEQUENTIAL_CMAP

PAGE = "explorer.html"
TEMPLATE = "explorer_template.html"  # beside this module, so the package-data pattern "*.html" ships it
BUDGET = 3_000_000  # bytes of maps (4 MB once base64'd): over it, per-head maps are left out, finest grid first
ALPHA = 0.55  # heatmap opacity over the image, as in heatmaps.png (`probe_figures.attention_grid`)

MEASURES = {  # one line per measure of timestep.csv / skips.csv (probes/timestep.py, probes/skips.py)
    "temb_rel_norm": "‖time embedding broadcast over H×W‖ / ‖conv1 output‖: near 0, the block barely hears t",
    "sens_zero": "‖ε′ − ε‖ / ‖ε‖ when this block's time embedding is zeroed",
    "sens_swap": "‖ε′ − ε‖ / ‖ε‖ when this block's time embedding is that of another timestep",
    "norm_ratio": "‖skip‖ / ‖backbone‖ at the concatenation",
    "hf_skip": "share of the skip's spectral energy above the cutoff frequency (FreeU, Si et al. 2024)",
    "hf_backbone": "share of the backbone's spectral energy above the cutoff frequency",
    "delta_zero": "‖ε′ − ε‖ / ‖ε‖ when the skip is zeroed",
    "delta_mean": "‖ε′ − ε‖ / ‖ε‖ when the skip is replaced by its per-channel spatial mean",
    "delta_scale": "‖ε′ − ε‖ / ‖ε‖ when the skip is scaled",
}


def quantise(a: np.ndarray) -> tuple[np.ndarray, float, float]:
    """uint8 codes q with a ~= lo + q * step: the map's own range in 256 levels (a constant map codes to 0)."""
    a = np.asarray(a, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    step = (hi - lo) / 255 if hi > lo else 1.0
    return np.rint((a - lo) / step).astype(np.uint8), lo, step


def pack(maps: dict[str, np.ndarray]) -> tuple[bytes, dict[str, list]]:
    """Concatenate the quantised maps: (bytes, {key: [offset, h, w, lo, step]})."""
    chunks, index, offset = [], {}, 0
    for key, m in maps.items():
        q, lo, step = quantise(m)
        # 7 significant digits: far below the quantisation error, and a short JSON index
        index[key] = [offset, int(m.shape[0]), int(m.shape[1]), float(f"{lo:.7g}"), float(f"{step:.7g}")]
        chunks.append(q.tobytes())
        offset += q.size
    return b"".join(chunks), index


def plan(layers: list[dict], n_entries: int, n_bins: int, grid: tuple[int, int], budget: int = BUDGET):
    """(grids whose layers keep their per-head maps, bytes of maps): every entry's (bins + 1) x (common grid + each
    layer's grid) maps, then each multi-head layer's heads over all timesteps, coarsest grid first while the total
    stays within `budget` (a grid's layers all keep their heads or all lose them)."""
    total = n_entries * (n_bins + 1) * (grid[0] * grid[1] + sum(l["h"] * l["w"] for l in layers))
    kept = []
    for hw in sorted({(l["h"], l["w"]) for l in layers}, key=lambda hw: hw[0] * hw[1]):
        cost = n_entries * sum(l["h"] * l["w"] * l["heads"] for l in layers
                               if (l["h"], l["w"]) == hw and l["heads"] > 1)
        if total + cost > budget:
            break
        kept.append(hw)
        total += cost
    return kept, total


def _maps(data: dict, head_grids) -> dict[str, np.ndarray]:
    """Key every map as the page reads it: g/entry/bin, l/entry/layer/bin, h/entry/layer/head (bin 0: all)."""
    out = {}
    for e in range(len(data["entries"])):
        out.update({f"g/{e}/{p}": g for p, g in enumerate(data["global_maps"][e])})
        for j, per_bin in enumerate(data["layer_maps"][e]):
            out.update({f"l/{e}/{j}/{p}": m for p, m in enumerate(per_bin)})
            heads, layer = data["head_maps"][e][j], data["layers"][j]
            if heads is not None and (layer["h"], layer["w"]) in head_grids:
                out.update({f"h/{e}/{j}/{k}": m for k, m in enumerate(heads)})
    return out


def _resolutions(layers: list[dict]) -> list[dict]:
    """The layer groups sharing a grid, finest first."""
    grids = sorted({(l["h"], l["w"]) for l in layers}, key=lambda hw: -hw[0] * hw[1])
    return [dict(id=f"res:{h}x{w}", h=h, w=w, layers=[j for j, l in enumerate(layers) if (l["h"], l["w"]) == (h, w)])
            for h, w in grids]


def _png_uri(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _lut(cmap: str) -> list[int]:
    """The colour map as 256 RGB triples, flattened (the page colours the heatmap with the figures' map)."""
    return (matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(int).ravel().tolist()


def _render(**context) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE).render(**context)


def _write(path: Path, html: str) -> int:
    path = Path(path)
    path.write_text(html, encoding="utf-8")
    return path.stat().st_size


def attention_page(data: dict, image: np.ndarray, path: str | Path, files=(), title: str | None = None,
                   budget: int = BUDGET) -> int:
    """Write the attention explorer for `data` (`probes.explorer_maps`) over `image` (H, W, 3 uint8) to `path`;
    `files`: names of the run's files to link; `budget`: see `plan`. Returns the page's size in bytes."""
    head_grids, _ = plan(data["layers"], len(data["entries"]), len(data["bins"]), data["grid"], budget)
    raw, index = pack(_maps(data, head_grids))
    meta = dict(
        prompt=data["prompt"], grid=list(data["grid"]), image=[int(image.shape[0]), int(image.shape[1])],
        entries=data["entries"],
        default_entry=next((i for i, e in enumerate(data["entries"]) if e["kind"] == "word"), 0),
        layers=[{**l, "per_head": any(h[j] is not None for h in data["head_maps"]) and (l["h"], l["w"]) in head_grids}
                for j, l in enumerate(data["layers"])],
        heads_left_out=sorted({f"{l['h']}×{l['w']}" for l in data["layers"]
                               if l["heads"] > 1 and (l["h"], l["w"]) not in head_grids}),
        resolutions=_resolutions(data["layers"]),
        bins=[dict(label="all timesteps", lo=None, hi=None)]
        + [dict(label=f"t {b['lo']:g}–{b['hi']:g}", **b) for b in data["bins"]],
        maps=index, blob=base64.b64encode(raw).decode("ascii"), cmap=_lut(HEATMAP_CMAP), alpha=ALPHA,
        all_label="all layers" if all(l["daam"] for l in data["layers"]) else "all layers but the mid block (DAAM)")
    return _write(path, _render(kind="attention", title=title or f"Attention explorer: {data['prompt']}",
                                prompt=data["prompt"], files=list(files), meta=meta, image_uri=_png_uri(image),
                                tables=[]))


def measure_tables(table: pd.DataFrame, row: str) -> list[dict]:
    """One block x timestep table per measure of a tidy (`row`, timestep, metric, value) frame, as pandas Styler HTML
    (colour per table: each measure has its own scale)."""
    out = []
    for measure in dict.fromkeys(table["metric"]):
        wide = (table[table["metric"] == measure]
                .pivot_table(index=row, columns="timestep", values="value", aggfunc="mean", sort=False)
                .sort_index(axis=1))
        wide.columns = pd.Index([f"t = {t:g}" for t in wide.columns], name=row)  # one header row, "block" at its left
        wide.index.name = None
        styler = (wide.style.format("{:.4g}").format_index(escape="html").format_index(escape="html", axis=1)
                  .background_gradient(cmap=SEQUENTIAL_CMAP, axis=None).set_uuid(measure)
                  .set_table_attributes(f'class="measure-table" data-measure="{measure}"'))
        out.append(dict(measure=measure, note=MEASURES.get(measure, ""), html=styler.to_html()))
    return out


def table_page(table: pd.DataFrame, probe: str, path: str | Path, files=(), prompt: str = "") -> int:
    """Write the explorer of a timestep (rows: ``block``) or skips (rows: ``skip``) run's tidy table to `path`."""
    row = {"timestep": "block", "skips": "skip"}[probe]
    return _write(path, _render(kind="tables", title=f"{probe} explorer" + (f": {prompt}" if prompt else ""),
                                prompt=prompt, files=list(files), meta={}, image_uri="", row=row,
                                tables=measure_tables(table, row)))

