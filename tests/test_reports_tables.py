"""table.tex: booktabs structure, bold best, arrows, caption, and that pdflatex compiles it."""
import re
import shutil
import subprocess

import pytest

from reports import build_report
from reports.tables import choose_primary, decimals_for, latex_escape
from reports.testing import make_shapes_sweep, make_sweep, write_job


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    values = make_sweep(root, variants=("baseline", "no_norm", "layer_norm"), seeds=(0, 1, 2))
    write_job(root, "drop_mid", 0, status="failed", error="CUDA out of memory")
    return root, values, build_report(root)


def _rows(tex):
    body = tex.split("\\midrule")[1].split("\\bottomrule")[0]
    return {line.split("&")[0].strip(): [c.strip().removesuffix("\\\\").strip() for c in line.split("&")[1:]]
            for line in body.strip().splitlines()}


def test_booktabs_structure(built):
    tex = built[2]["table"].read_text()
    assert tex.index("\\toprule") < tex.index("\\midrule") < tex.index("\\bottomrule")
    assert "\\hline" not in tex                                   # booktabs rules only
    assert re.search(r"\\begin\{tabular\}\{lrrr\}", tex)
    header = tex.split("\\toprule")[1].split("\\midrule")[0]
    assert "fid $\\downarrow$" in header and "kid $\\downarrow$" in header and "clip\\_score $\\uparrow$" in header


def test_cells_are_means_with_ci_and_best_is_bold(built):
    root, values, res = built
    rows = _rows(res["table"].read_text())
    assert set(rows) == {"baseline", "no\\_norm", "layer\\_norm", "drop\\_mid"}
    fid_means = {v: sum(values[(v, s)]["fid"] for s in range(3)) / 3 for v in ("baseline", "no_norm", "layer_norm")}
    best = min(fid_means, key=fid_means.get)
    for v, mean in fid_means.items():
        cell = rows[latex_escape(v)][0]
        assert cell.startswith("\\bfseries") == (v == best)
        shown = float(re.search(r"(-?\d+\.\d+) \$\\pm\$", cell).group(1))
        assert shown == pytest.approx(mean, abs=0.051)            # 2 significant digits of a ~1.x CI -> 1 decimal
    assert rows["drop\\_mid"] == ["--", "--", "--"]               # failed: no number invented


def test_caption_names_n_seeds_protocol_and_missing(built):
    tex = built[2]["table"].read_text()
    cap = re.search(r"\\caption\{(.*)\}\n", tex).group(1)
    assert "N = 256" in cap and "3 seeds (0, 1, 2)" in cap and "protocol: inference" in cap
    assert "t-interval over seeds" in cap and "3 of 12 jobs failed or missing" in cap


def test_decimals_follow_the_uncertainty():
    assert decimals_for(0.37, 20.0) == 2
    assert decimals_for(2.3, 20.0) == 1
    assert decimals_for(23.0, 200.0) == 0
    assert decimals_for(float("nan"), 0.2958) == 3          # no CI: 3 significant digits


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A norms-like inference sweep: 14 metrics, floors, primary_metrics in the job configs."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_sweep(root, variants=("groupnorm", "layernorm", "rmsnorm"))
    return build_report(root)


def test_primary_metrics_are_the_configured_ones_that_were_measured():
    measured = ["denoising_loss", "fd_evaluator", "kid_evaluator", "clip_evaluator", "colour_acc", "object_acc"]
    assert choose_primary(measured, ["fid", "fd_evaluator", "object_acc", "clip_evaluator", "denoising_loss"]) == [
        "fd_evaluator", "object_acc", "clip_evaluator", "denoising_loss"]           # config order, absent skipped
    assert choose_primary(measured, None, n_default=3) == measured[:3]              # no config: the first few
    assert choose_primary(measured, ["fid"], n_default=2) == measured[:2]           # nothing measured: the same


def test_table_tex_holds_the_primary_metrics_and_table_full_every_compared_one(shapes):
    header = lambda tex: next(l for l in tex.splitlines() if l.startswith("Variant")).removesuffix("\\\\")
    main, full = shapes["table"].read_text(), shapes["table_full"].read_text()
    assert [c.split(" $")[0].strip() for c in header(main).split("&")[1:]] == [
        "denoising\\_loss", "fd\\_evaluator", "kid\\_evaluator", "object\\_acc", "clip\\_evaluator"]
    cols = [c.split(" $")[0].strip() for c in header(full).split("&")[1:]]
    assert len(cols) == 11 and "train\\_loss\\_last" in cols and not any("floor" in c or "std" in c for c in cols)
    for tex in (main, full):
        cap = re.search(r"\\caption\{(.*)\}\n", tex).group(1)
        assert ("Real-vs-real floor at the same N: fd\\_evaluator 18.6 [17, 20], kid\\_evaluator 0.05 [-0.05, 0.15] "
                "([lo, hi]: the jobs' 95\\% CI of the floor)." in cap)
        assert "\\textsuperscript{b}: CI from the jobs' bootstrap over images" in cap      # the mark is explained
        assert "$$" not in tex                                # adjacent math groups would open display math
    # the seed-invariant denoising loss carries the bootstrap mark and its job CI, not "± 0"
    rows = _rows(main)
    assert rows["layernorm"][0] == "0.0600 $\\pm$ 0.0040\\textsuperscript{b}$^\\dagger$"
    assert "textsuperscript" not in rows["layernorm"][1]                        # FD moves with the seeds


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (CI installs texlive)")
@pytest.mark.parametrize("which", ["table", "shapes_table", "shapes_table_full"])
def test_table_compiles_with_pdflatex(built, shapes, which, tmp_path):
    tex = {"table": built[2]["table"], "shapes_table": shapes["table"],
           "shapes_table_full": shapes["table_full"]}[which].read_text()
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + tex +
                   "\n\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000
