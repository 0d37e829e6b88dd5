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
    for name in ("results.csv", "results.parquet", "summary.csv", "table.tex", "table_full.tex", "report/index.html",
                 "figures/metrics.pdf", "figures/metrics.png", "figures/tradeoff.png", "figures/samples.png",
                 "figures/probe_probes_attention_attention.png", "figures/probe_probes_attention_attention_layers.csv"):
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
    assert any(l.endswith("attention_layers.csv") for l in parser.links)   # short layer names → module paths
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


# --- the sweep report in a real browser (Selenium, tests/conftest.py's `browser`, 1280x900) ---------------------

# Cells of the main tables whose text runs over more than one line (a superscript sits a few px higher: not a line).
_WRAPPED = """return Array.from(document.querySelectorAll("#summary-table td, #delta-table td")).filter(td => {
  const r = document.createRange(); r.selectNodeContents(td);
  const tops = Array.from(r.getClientRects()).map(x => x.top);
  return Math.max(...tops) - Math.min(...tops) > 10; }).map(td => td.textContent)"""
_PAGE_STATE = """return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
  broken: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src")),
  n_images: document.images.length}"""


@pytest.fixture(scope="module")
def shapes_report(tmp_path_factory):
    """A norms-like inference sweep at full width: 14 metrics, floors, the sweep's primary_metrics in its configs."""
    from reports import build_report
    from reports.testing import make_shapes_sweep

    root = tmp_path_factory.mktemp("shapes sweep")
    make_shapes_sweep(root)
    return build_report(root)["html"]


def _open(browser, page: Path) -> dict:
    browser.get(page.as_uri())
    browser.get_log("browser")  # drop what an earlier page logged; this page's own messages are read after
    browser.refresh()
    return browser.execute_script(_PAGE_STATE)


def test_sweep_report_fits_1280px_with_the_primary_metrics_and_the_rest_one_click_away(browser, shapes_report):
    from selenium.webdriver.common.by import By

    state = _open(browser, shapes_report)
    assert state["scroll"] <= state["inner"], state                  # no horizontal scrolling at 1280 px
    assert browser.execute_script(_WRAPPED) == []                    # ... and no cell squeezed onto two lines
    assert state["n_images"] == 3 + 21 and state["broken"] == []     # metrics, trade-off, samples; 21 sample grids
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    heads = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#summary-table thead th")]
    assert heads == ["variant", "denoising_loss ↓", "fd_evaluator ↓", "kid_evaluator ↓", "object_acc ↑",
                     "clip_evaluator ↑"]
    # the floor is one reference line, in no table
    floor = browser.find_element(By.ID, "floor").text
    assert "fd_evaluator 18.6 [17, 20]" in floor
    assert "18.6" not in browser.find_element(By.ID, "summary").text.replace(floor, "")
    assert all("floor" not in th.text for th in browser.find_elements(By.CSS_SELECTOR, "table.metrics th"))
    # the other metrics: hidden until one click, then shown in tables that still fit
    other = browser.find_element(By.ID, "other-metrics")
    first_other = other.find_element(By.CSS_SELECTOR, "table")
    assert not first_other.is_displayed()
    other.find_element(By.TAG_NAME, "summary").click()
    assert first_other.is_displayed()
    shown = {th.text.split(" ")[0] for th in other.find_elements(By.CSS_SELECTOR, "thead th")} - {"variant", "Δ"}
    assert shown == {"colour_acc", "shape_acc", "all_correct", "count_correct", "relation_acc", "train_loss_last"}
    state = browser.execute_script(_PAGE_STATE)
    assert state["scroll"] <= state["inner"], state
    # the caption is two sentences, the method and provenance a click further
    caption = browser.find_element(By.ID, "summary-caption").text
    assert len(re.findall(r"[.](?:\s|$)", caption)) == 2, caption
    assert not browser.find_element(By.CSS_SELECTOR, "#summary-details p").is_displayed()
    browser.save_screenshot(str(shapes_report.with_name("screenshot.png")))   # for a human look at the page


def test_each_ci_says_its_method_and_seed_invariant_metrics_use_the_bootstrap(browser, shapes_report):
    from selenium.webdriver.common.by import By

    _open(browser, shapes_report)
    rows = {r.find_element(By.TAG_NAME, "td").text.split(" ")[0]: r.find_elements(By.TAG_NAME, "td")[1:]
            for r in browser.find_elements(By.CSS_SELECTOR, "#summary-table tbody tr")}
    loss, fd = rows["layernorm"][0], rows["layernorm"][1]
    # the denoising loss is the same on every seed (inference): the jobs' bootstrap, marked b, never "± 0"
    assert loss.text == "0.0600 ± 0.0040 †b" and "bootstrap over images" in loss.get_attribute("title")
    assert fd.get_attribute("title") == "n = 3; CI: t-interval over seeds" and not fd.text.endswith("b")
    deltas = {r.find_element(By.TAG_NAME, "td").text: r.find_elements(By.TAG_NAME, "td")[1:]
              for r in browser.find_elements(By.CSS_SELECTOR, "#delta-table tbody tr")}
    assert deltas["layernorm"][0].text == "+0.0100 [+0.0043, +0.0157] †b"
    assert "in quadrature" in deltas["layernorm"][0].get_attribute("title")
    assert "paired t-interval" in deltas["layernorm"][1].get_attribute("title")
    assert "(n=" not in deltas["layernorm"][1].text                  # every seed paired: n stated once, not per cell


def test_browser_checks_can_fail(browser, shapes_report):
    """The same page with a wide table and a missing image is caught by the same checks."""
    html = shapes_report.read_text()
    bad = shapes_report.with_name("_bad.html")
    first = re.search(r'<img src="([^"]+)"', html).group(1)
    bad.write_text(html.replace(f'src="{first}"', 'src="../figures/nowhere.png"', 1)
                   .replace("</body>", '<table><tr><td style="white-space:nowrap">' + "x" * 400 + "</td></tr></table>"
                            "</body>"))
    state = _open(browser, bad)
    assert state["scroll"] > state["inner"] and state["broken"] == ["../figures/nowhere.png"]
    assert any(e["level"] == "SEVERE" for e in browser.get_log("browser"))   # the 404 of the image is logged
    bad.unlink()
