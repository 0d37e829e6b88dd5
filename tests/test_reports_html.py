"""report/index.html: built by ``python -m reports DIR``, self-contained, says what is missing, and renders in a
real headless browser (Debian's chromium) with no broken images."""
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from reports.testing import make_sweep, write_job

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.images = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        for key in ("href", "src"):
            if a.get(key):
                self.links.append(a[key])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep with space")       # links must survive spaces in paths
    make_sweep(root, variants=("baseline", "no_norm"), seeds=(0, 1))
    write_job(root, "frozen", 0, status="failed", error="ValueError: <bad> & worse")
    probe = root / "probes" / "attention"
    probe.mkdir(parents=True)
    (probe / "maps.csv").write_text("word,token_index,layer,resolution,t_bin,t_lo,t_hi,mean,max,entropy\n" + "".join(
        f"{w},{i},L{l},16,{b},{b * 500},{b * 500 + 500},{0.1 * (i + l + b)},{0.5},{1.0}\n"
        for i, w in enumerate(["red", "circle"], 1) for l in range(2) for b in range(2)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-m", "reports", str(root)], capture_output=True, text=True, env=env,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert "INCOMPLETE" in proc.stdout and "frozen seed 1" in proc.stdout
    return root, root / "report" / "index.html"


def test_cli_wrote_every_artefact(report):
    root, page = report
    for name in ("results.csv", "results.parquet", "summary.csv", "table.tex", "report/index.html",
                 "figures/metrics.pdf", "figures/metrics.png", "figures/tradeoff.png", "figures/samples.png",
                 "figures/probe_probes_attention_attention.png"):
        assert (root / name).stat().st_size > 0, name


def test_page_is_self_contained_with_working_relative_links(report):
    root, page = report
    html = page.read_text()
    parser = _Links()
    parser.feed(html)
    assert len(parser.images) == 4 + 4                        # 4 figures + one samples.png per successful job
    for link in parser.links:
        assert not re.match(r"^[a-z]+:", link), f"absolute/network link {link}"   # no http:, file:, data: ...
        target = (page.parent / unquote(link.split("#")[0])).resolve()
        assert target.exists(), f"broken link {link}"
    for job in ("baseline__seed0", "no_norm__seed1", "frozen__seed0"):  # a link to every job
        assert any(f"jobs/{job}/" in l for l in parser.links)


def test_page_says_what_is_missing_and_escapes_errors(report):
    _, page = report
    html = page.read_text()
    status = re.search(r'<div id="status"[^>]*>(.*?)</div>', html, re.S).group(1)
    assert "Incomplete sweep" in status and "2 of 6 jobs" in status
    assert "frozen" in status and "ValueError: &lt;bad&gt; &amp; worse" in status     # data, not markup
    assert re.search(r"missing: <code>frozen</code> seed 1", status)
    assert "t-interval over seeds" in html and "N = 256 images per job" in html
    # what else moves the numbers, each distinct value once (a list used to be repeated once per job)
    assert "image seeds [0, 1, 2, 3]; sampler DDIM" in html and f"weights sha256 6726825d{'0' * 56}" in html
    assert "git revision" in html and "abc1234" in html and "pandas" in html


_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.getAttribute("src"); });
  var out = document.createElement("pre");
  out.id = "img-check";
  out.textContent = JSON.stringify({n: imgs.length, broken: broken});
  document.body.appendChild(out);
});
</script>"""


def _browser_image_check(page: Path, tmp_path: Path) -> dict:
    """Load ``page`` in headless chromium, run an image check on load and read its verdict from the DOM."""
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'chromium-profile'}", "--allow-file-access-from-files",
                          "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=60).stdout
    m = re.search(r'<pre id="img-check">(.*?)</pre>', dom, re.S)
    assert m, f"the check script did not run; DOM tail: {dom[-500:]}"
    return json.loads(m.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (CI: apt-get install chromium)")
def test_renders_in_headless_chromium_without_broken_images(report, tmp_path):
    _, page = report
    html = page.read_text()
    # The check page sits next to index.html, so every relative link resolves exactly as the report's own.
    check = page.with_name("_check.html")
    check.write_text(html.replace("</body>", _CHECK + "</body>"))
    result = _browser_image_check(check, tmp_path)
    assert result["n"] == 8 and result["broken"] == []
    # The check itself can fail: the same page with one image pointing nowhere is reported broken.
    first = re.search(r'<img src="([^"]+)"', html).group(1)
    check.write_text(html.replace(f'src="{first}"', 'src="../figures/nowhere.png"', 1)
                     .replace("</body>", _CHECK + "</body>"))
    assert _browser_image_check(check, tmp_path)["broken"] == ["../figures/nowhere.png"]
    check.unlink()
