"""``build_report(sweep_dir)``: job files → results, summary, table.tex, figures and report/index.html.

This is the one function the sweep calls at its end and ``python -m reports DIR`` wraps. It reads only files on
disk (the job files of docs/CONTRACTS.md and probe CSVs), so a report can be rebuilt at any time, also while a
sweep is still running: unfinished jobs are listed as missing.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from . import figures
from .environment import environment
from .html import chunks, config_blocks, delta_rows, job_rows, rel_href, render, summary_caption, summary_rows
from .html import probe_runs
from .jobs import OUTPUT_DIRS, Jobs, load_jobs, provenance_value
from .style import save_figure
from .summary import CI_METHOD, CONFIDENCE, summarize
from .tables import best_seeds, caption, choose_primary, ci_mark, floor_text, latex_table

SAMPLES_FILE = "samples.png"
# Probe tables (docs/CONTRACTS.md, "Probe tables") → the figure function that draws them.
PROBE_TABLES = {"maps.csv": ("attention", figures.attention_breakdown, "Cross-attention per word × layer and "
                             "word × timestep bin"),
                "timestep.csv": ("timestep", figures.timestep_heatmap, "Time-embedding effect per block × timestep"),
                "skips.csv": ("skips", figures.skip_heatmap, "Skip-connection contribution per skip × timestep")}
# Named on the page (and n/sampler/sample_steps/guidance_scale in the caption). weights_sha256 tells which extractor weights
# made the numbers, seeds how each image's noise was drawn: both are needed to reproduce a table.
PROVENANCE_KEYS = ("n", "seeds", "sampler", "sample_steps", "guidance_scale", "implementation", "extractor", "weights_sha256",
                   "resize")
# "seeds" alone would read like the job seeds the line already lists: these are the per-image sampling seeds.
PROVENANCE_LABELS = {"seeds": "image seeds"}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "root"


def _provenance_values(records: list[dict]) -> dict[str, list]:
    """Distinct provenance values over successful jobs (several values = the sweep mixed settings; show all)."""
    out: dict[str, list] = {}
    for rec in records:
        if rec.get("status") != "ok":
            continue
        for k, v in (rec.get("provenance") or {}).items():
            if k in PROVENANCE_KEYS and v is not None:
                vals = out.setdefault(k, [])
                cell = provenance_value(v)  # lists to text first, so equal lists count once
                if cell not in vals:
                    vals.append(cell)
    return out


def _provenance_line(prov: dict[str, list], seeds: list[int], protocols: list) -> str:
    parts = [f"N = {', '.join(map(str, prov.get('n', []))) or 'not recorded'} images per job",
             f"seeds {', '.join(map(str, seeds)) or 'none'}",
             f"protocol {', '.join(map(str, protocols)) or 'not recorded'}"]
    parts += [f"{PROVENANCE_LABELS.get(k, k.replace('_', ' '))} {', '.join(map(str, prov[k]))}"
              for k in PROVENANCE_KEYS[1:] if k in prov]
    return "; ".join(parts) + "."


def configured_primary(records: list[dict], root: Path) -> list[str] | None:
    """The sweep's ``primary_metrics`` (configs/sweep/*.yaml), from the first successful job's resolved
    ``config.yaml``; None when no job recorded one (single runs, other tools' job files)."""
    for rec in records:
        cfg = root / rec["_dir"] / "config.yaml"
        if rec.get("status") != "ok" or not cfg.is_file():
            continue
        try:
            value = (yaml.safe_load(cfg.read_text()) or {}).get("primary_metrics")
        except (yaml.YAMLError, AttributeError):
            continue
        if value:
            return [str(m) for m in value]
    return None


def floors_of(ok: pd.DataFrame, floor_cols: list[str], job_ci: dict) -> dict[str, tuple[float, float, float]]:
    """metric → (mean over jobs, lo, hi) of each real-vs-real floor, the CI being the jobs' own (metrics/floor.py:
    a t-interval over disjoint real draws; mean bounds over jobs).

    A floor measures the reference data at this N, not a variant: one value for the whole sweep."""
    out = {}
    for col in floor_cols:
        vals = ok[col].dropna()
        if vals.empty:
            continue
        cis = [job_ci[k] for k in ((v, int(s), col) for v, s in zip(ok.loc[vals.index, "variant"],
                                                                    ok.loc[vals.index, "seed"])) if k in job_ci]
        lo, hi = (float(np.mean([c[i] for c in cis])) if cis else float("nan") for i in (0, 1))
        out[col.removesuffix("_floor")] = (float(vals.mean()), lo, hi)
    return out


def _sample_paths(jobs: Jobs) -> dict[str, list[tuple[int, Path]]]:
    """variant → [(seed, samples.png)] over successful jobs that wrote a sample grid."""
    out: dict[str, list[tuple[int, Path]]] = {}
    for r in jobs.results.itertuples(index=False):
        if r.status == "ok" and isinstance(r.job, str) and (jobs.root / r.job / SAMPLES_FILE).is_file():
            out.setdefault(r.variant, []).append((int(r.seed), jobs.root / r.job / SAMPLES_FILE))
    return out


def _grid_choice(samples: dict[str, list[tuple[int, Path]]]) -> tuple[dict[str, Path], int | None]:
    """One samples.png per variant for the figure, all from the same job seed when possible (paired rows)."""
    seed_counts: dict[int, int] = {}
    for pairs in samples.values():
        for s, _ in pairs:
            seed_counts[s] = seed_counts.get(s, 0) + 1
    if not seed_counts:
        return {}, None
    seed = min(seed_counts, key=lambda s: (-seed_counts[s], s))
    chosen = {}
    for v, pairs in samples.items():
        by_seed = dict(pairs)
        chosen[v if seed in by_seed else f"{v} (seed {min(by_seed)})"] = by_seed.get(seed, by_seed[min(by_seed)])
    return chosen, seed


def _find_probe_tables(root: Path) -> list[Path]:
    found = []
    for name in PROBE_TABLES:
        for p in sorted(root.rglob(name)):
            if p.relative_to(root).parts[0] not in OUTPUT_DIRS:
                found.append(p)
    return found


def _figure(fig_fn, stem: Path, caption_text: str, page_dir: Path, made: list, shown: list, warnings: list,
            *args, **kwargs) -> None:
    """Draw, save and register one figure; a figure that cannot be drawn becomes a warning, not a crash."""
    try:
        fig = fig_fn(*args, **kwargs)
    except (ValueError, KeyError, OSError) as e:
        warnings.append(f"figure {stem.name} not drawn: {e}")
        return
    width_in = float(fig.get_size_inches()[0])
    pdf, png = save_figure(fig, stem)
    made.extend([pdf, png])
    # Shown at its print size (96 css px per inch), so one- and two-column figures look as they will in the paper.
    shown.append({"png": rel_href(png, page_dir), "pdf": rel_href(pdf, page_dir), "caption": caption_text,
                  "width_px": round(width_in * 96), "csv": None})


def build_report(sweep_dir: str | Path, *, out_dir: str | Path | None = None, title: str | None = None,
                 primary_metrics: list[str] | None = None) -> dict:
    """Rebuild every report artefact of ``sweep_dir`` from its job files; returns what was written and what is
    missing.

    Writes into ``out_dir`` (default: ``sweep_dir``): ``results.csv``, ``results.parquet``, ``summary.csv``,
    ``table.tex`` (the primary metrics: ``primary_metrics``, else the sweep config's, else the first few),
    ``table_full.tex`` (every compared metric), ``figures/*.pdf|png`` and ``report/index.html``. Returns a dict
    with those paths under the keys ``results``, ``results_parquet``, ``summary``, ``table``, ``table_full``,
    ``figures`` (list), ``html``, plus
    ``complete`` (bool), ``n_jobs``, ``incomplete`` (list of {variant, seed, status, error, job}) and
    ``warnings`` (list of str). Raises ``FileNotFoundError`` when the folder holds no job files and no probe tables.
    """
    root = Path(sweep_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"not a directory: {root}")
    out = Path(out_dir).resolve() if out_dir else root
    fig_dir, page_dir = out / "figures", out / "report"
    jobs = load_jobs(root)
    probe_tables = _find_probe_tables(root)
    if jobs.results.empty and not probe_tables:
        raise FileNotFoundError(f"no result.json job files and no probe tables (maps.csv, timestep.csv, skips.csv) "
                                f"under {root}")
    out.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(exist_ok=True)
    page_dir.mkdir(exist_ok=True)
    warnings: list[str] = []
    made_figures: list[Path] = []
    shown: list[dict] = []
    paths = {"results": out / "results.csv", "results_parquet": out / "results.parquet",
             "summary": out / "summary.csv", "table": out / "table.tex", "table_full": out / "table_full.tex",
             "html": page_dir / "index.html"}

    results = jobs.results
    results.to_csv(paths["results"], index=False)
    results.to_parquet(paths["results_parquet"], index=False)
    baseline = jobs.baseline
    if not results.empty and baseline is None:
        warnings.append("no variant is marked baseline: deltas are not computed")
    summary = summarize(results, jobs.metrics, jobs.higher_is_better, baseline, jobs.job_ci)
    summary.to_csv(paths["summary"], index=False)

    ok = results[results["status"] == "ok"]
    seeds = sorted(int(s) for s in ok["seed"].unique())
    protocols = list(dict.fromkeys(ok["protocol"].dropna()))
    prov = _provenance_values(jobs.records)
    sweep_name = next(iter(results["sweep"].dropna()), None) if not results.empty else None
    incomplete = jobs.incomplete
    primary, others, floors, page_caption = [], [], {}, ""
    if jobs.metrics:
        # Floors (real vs real) and KID's subset std describe the reference or the estimator, not a variant:
        # they go to the caption / CSVs, and the tables keep one column per compared metric.
        floor_cols = [m for m in jobs.metrics if m.endswith("_floor")]
        floors = floors_of(ok, floor_cols, jobs.job_ci)
        table_metrics = [m for m in jobs.metrics if not m.endswith(("_floor", "_std"))]
        primary = choose_primary(table_metrics, primary_metrics or configured_primary(jobs.records, root))
        others = [m for m in table_metrics if m not in primary]
        label = f"tab:{_slug(sweep_name or root.name)}"
        for key, shown_metrics, suffix in (("table", primary, ""), ("table_full", table_metrics, "-full")):
            marked = any(ci_mark(m) for m in summary.loc[summary["metric"].isin(shown_metrics), "ci_method"])
            cap = caption(sweep=sweep_name or root.name, n_images=prov.get("n", []), seeds=seeds, protocols=protocols,
                          baseline=baseline, provenance=prov, n_incomplete=len(incomplete), n_jobs=len(results),
                          other_ci_methods=[m for m in dict.fromkeys(summary["ci_method"]) if m != CI_METHOD],
                          floors=floors, best_seeds=best_seeds(summary, shown_metrics), bootstrap_marked=marked)
            paths[key].write_text(latex_table(summary, caption_text=cap, label=label + suffix, metrics=shown_metrics))
        page_caption = summary_caption(
            n_seeds=len(seeds), seeds=seeds, protocols=protocols, n_images=prov.get("n", []), baseline=baseline,
            primary=bool(others), marked=any(ci_mark(m) for m in summary.loc[summary["metric"].isin(primary),
                                                                                ["ci_method", "delta_ci_method"]]
                                               .to_numpy().ravel()))
        # The figures compare variants too: floors and KID's std would be panels/axes of per-variant numbers
        # that the table (and the caption's single floor value) rightly do not show.
        compared = summary[summary["metric"].isin(table_metrics)]
        metric_caption = (f"Mean and {int(CONFIDENCE * 100)}% CI per variant ({CI_METHOD}; the jobs' bootstrap over "
                          "images where the seeds give none); grey, dashed: baseline"
                          + ("; dotted: real-vs-real floor" if floors else ""))
        _figure(figures.metric_bars, fig_dir / "metrics", metric_caption, page_dir, made_figures, shown, warnings,
                compared, floors={m: v[0] for m, v in floors.items()})
        if figures.find_metric(table_metrics, ("fid", "fd", "kid")) and figures.find_metric(table_metrics,
                                                                                             ("clip",)):
            _figure(figures.tradeoff, fig_dir / "tradeoff", "Image quality vs text alignment (95% CI whiskers)",
                    page_dir, made_figures, shown, warnings, compared)
    else:
        # Keep the contract (table.tex always exists) without inventing numbers.
        for key in ("table", "table_full"):
            paths[key].write_text("% no successful job reported metrics: nothing to tabulate\n")
        if not results.empty:
            warnings.append("no successful job reported metrics: table and metric figures are empty")

    samples = _sample_paths(jobs)
    chosen, grid_seed = _grid_choice(samples)
    if chosen:
        _figure(figures.sample_grid, fig_dir / "samples",
                f"Samples per variant (job seed {grid_seed}; same sampling seeds in every row)", page_dir,
                made_figures, shown, warnings, chosen)

    for table in probe_tables:
        kind, fn, cap_text = PROBE_TABLES[table.name]
        rel = table.parent.relative_to(root).as_posix()
        try:
            df = pd.read_csv(table)
        except (OSError, ValueError) as e:
            warnings.append(f"{table.relative_to(root)} unreadable: {e}")
            continue
        stem = fig_dir / f"probe_{_slug(rel)}_{kind}"
        _figure(fn, stem, f"{cap_text} ({rel}/{table.name})", page_dir, made_figures, shown, warnings, df)
        if kind == "attention" and shown and shown[-1]["png"] == rel_href(stem.with_suffix(".png"), page_dir):
            # the figure prints the site map's short layer names; this maps them back to module paths
            names = stem.with_name(stem.name + "_layers.csv")
            figures.layer_names(df).to_csv(names, index=False)
            shown[-1]["csv"] = rel_href(names, page_dir)
        overlay = table.parent / "heatmaps.png"
        if kind == "attention" and overlay.is_file():
            shown.append({"png": rel_href(overlay, page_dir), "pdf": rel_href(overlay.with_suffix(".pdf"), page_dir)
                          if overlay.with_suffix(".pdf").is_file() else rel_href(overlay, page_dir),
                          "caption": f"Attention heatmaps per word ({rel}/heatmaps.png)", "width_px": None,
                          "csv": None})

    # Jobs that never started have no folder (job is NaN in the table): no link for them.
    incomplete_rows = [{"variant": r.variant, "seed": int(r.seed), "status": r.status, "error": r.error,
                        "job": r.job if isinstance(r.job, str) else None, "job_href": rel_href(root / r.job, page_dir) + "/" if isinstance(r.job, str)
                        else None} for r in incomplete.itertuples(index=False)]
    context = {
        "title": title or (f"Sweep report: {sweep_name}" if sweep_name else f"Report: {root.name}"),
        "root": str(root), "n_jobs": len(results), "complete": incomplete.empty,
        "variants": list(dict.fromkeys(results["variant"])), "seeds": sorted(set(results["seed"])),
        "incomplete": incomplete_rows, "n_failed": int((incomplete["status"] == "failed").sum()),
        "n_missing": int((incomplete["status"] == "missing").sum()), "warnings": warnings,
        "table": summary_rows(summary, jobs.higher_is_better, primary) if jobs.metrics else None,
        "deltas": delta_rows(summary, primary) if jobs.metrics else [], "baseline": baseline,
        "others": [{"table": summary_rows(summary, jobs.higher_is_better, part), "deltas": delta_rows(summary, part)}
                   for part in chunks(others)],
        "other_names": others, "summary_caption": page_caption, "floors": floor_text(floors) if floors else "",
        "floor_has_ci": any(np.isfinite(lo) for _, lo, _ in floors.values()),
        "provenance_line": _provenance_line(prov, seeds, protocols),
        "links": {k: rel_href(paths[k], page_dir) for k in ("results", "results_parquet", "summary", "table",
                                                            "table_full")}
        | {"results_csv": rel_href(paths["results"], page_dir)},
        "figures": shown, "probe_runs": probe_runs(root, page_dir),
        "samples": [{"variant": v, "images": [{"seed": s, "href": rel_href(p, page_dir)} for s, p in sorted(pairs)]}
                    for v, pairs in samples.items()],
        "jobs": job_rows(results, root, page_dir), "configs": config_blocks(jobs.records, root),
        "environment": environment(jobs.records),
    }
    paths["html"].write_text(render(context), encoding="utf-8")
    return {**paths, "figures": made_figures, "complete": bool(incomplete.empty), "n_jobs": int(len(results)),
            "incomplete": [{k: r[k] for k in ("variant", "seed", "status", "error", "job")} for r in incomplete_rows],
            "warnings": warnings}
