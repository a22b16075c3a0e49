"""The built book, read as a reader reads it: in a real headless Chromium, with no network but 127.0.0.1.

Run after `jupyter-book build .` (.ci/run does). It serves `_build/html` (or $LLMBOOK_HTML_DIR) on 127.0.0.1
from this process, opens every page with Debian's `chromium` (driven by Playwright, which downloads no
browser of its own), blocks every request that is not to 127.0.0.1, and checks that:
every page loads; internal links, anchors and images resolve; MathJax typesets every formula; mermaid
renders to SVG; exercise solutions toggle; each chapter's Colab link opens that chapter's notebook; the
book's own scripts log no console error. A screenshot of every page goes to `_build/screenshots/`, and
the time of each check is printed at the end.

Skipped, with the reason, when the book is not built, when no chromium is installed, or when Playwright
is not installed: a plain `pytest` on a laptop passes without them.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML_DIR = Path(os.environ.get("LLMBOOK_HTML_DIR", ROOT / "_build" / "html"))
SCREENSHOTS = HTML_DIR.parent / "screenshots"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
PAGE_TIMEOUT_MS = 30_000
TOTAL_BUDGET_S = 600  # the whole visit; CI must stay bounded
# Views that insist on a CDN and carry a static figure beside them (tooling notes: bertviz loads
# require.js paths for d3/jQuery from cdnjs). Blocked requests to them are expected offline.
THIRD_PARTY_CDN_HOSTS = ("cdnjs.cloudflare.com", "cdn.jsdelivr.net", "unpkg.com", "d3js.org", "code.jquery.com")

# pydata-sphinx-theme 0.17 logs this on a reader's first visit (no stored light/dark choice yet) and
# then picks "auto": harmless, and not the book's code.
KNOWN_THEME_MESSAGES = ("Got invalid theme mode: . Resetting to auto.",)


def _chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _missing_prerequisite() -> str | None:
    if not (HTML_DIR / "index.html").is_file():
        return f"the book is not built ({HTML_DIR} has no index.html): run `jupyter-book build .`"
    if _chromium() is None:
        return "no chromium on PATH (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright)"
    return None


MISSING = _missing_prerequisite()
# CI sets LLMBOOK_REQUIRE_BROWSER=1 so that a missing browser or build fails there instead of skipping.
REQUIRED = os.environ.get("LLMBOOK_REQUIRE_BROWSER") == "1"
pytestmark = pytest.mark.skipif(bool(MISSING) and not REQUIRED, reason=str(MISSING))


@pytest.fixture(scope="module", autouse=True)
def _prerequisites():
    if MISSING:
        pytest.fail(f"LLMBOOK_REQUIRE_BROWSER=1 but {MISSING}")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript", ".woff2": "font/woff2"}

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(_QuietHandler, directory=str(HTML_DIR))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _pages() -> list[str]:
    skip = {"genindex.html", "search.html", "index.html"}  # index.html only redirects to the preface
    return sorted(p.relative_to(HTML_DIR).as_posix() for p in HTML_DIR.rglob("*.html")
                  if p.name not in skip and not p.relative_to(HTML_DIR).parts[0].startswith("_"))


# What the page reports about itself once its scripts have run.
_INSPECT = r"""
() => {
  const visible = el => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  const math = [...document.querySelectorAll('.math')];
  const rawMath = math.filter(el => !el.querySelector('mjx-container')).map(el => el.textContent.slice(0, 80));
  // TeX delimiters left in prose (not in code or outputs) would mean MathJax never saw them.
  const prose = [...document.querySelectorAll('article p, article li, article td, article dd')]
    .filter(el => !el.closest('pre, code, .cell_output, .output, mjx-container'));
  const rawDelimiters = prose.map(el => el.innerText).filter(t => /\\\(|\\\[|\$\$/.test(t)).map(t => t.slice(0, 80));
  const mermaid = [...document.querySelectorAll('pre.mermaid, div.mermaid')];
  const mermaidUnrendered = mermaid.filter(el => !el.querySelector('svg')).length;
  const mermaidWidths = mermaid.map(el => { const s = el.querySelector('svg'); return s ? Math.round(s.getBoundingClientRect().width) : 0; });
  const images = [...document.querySelectorAll('article img')].filter(img => img.getAttribute('src'))
    .map(img => ({src: img.currentSrc || img.src, ok: img.complete && img.naturalWidth > 0}));
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  const ids = [...document.querySelectorAll('[id]')].map(el => el.id)
    .concat([...document.querySelectorAll('a[name]')].map(el => el.name));
  const colab = [...document.querySelectorAll('a[href*="colab.research.google.com"]')].map(a => a.href);
  const widgetStates = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length;
  const widgetsRendered = document.querySelectorAll('.jupyter-widgets, .widget-subarea *').length;
  const searchBoxes = [...document.querySelectorAll('input[type="search"], .search-button-field, form.bd-search')]
    .filter(visible).length;
  return {title: document.title, rawMath, rawDelimiters, mathCount: math.length, mermaidCount: mermaid.length,
          mermaidUnrendered, mermaidWidths, images, links, ids, colab, widgetStates, widgetsRendered, searchBoxes};
}
"""

_EMPTY = {"rawMath": [], "rawDelimiters": [], "mathCount": 0, "mermaidCount": 0, "mermaidUnrendered": 0,
          "mermaidWidths": [], "images": [], "links": [], "ids": [], "colab": [], "widgetStates": 0,
          "widgetsRendered": 0, "searchBoxes": 1}

_WAIT_FOR_SCRIPTS = r"""
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const deadline = Date.now() + 15000;
  const pending = () => [...document.querySelectorAll('pre.mermaid, div.mermaid')].some(el => !el.querySelector('svg'));
  while (pending() && Date.now() < deadline) { await new Promise(r => setTimeout(r, 100)); }
  return true;
}
"""


@pytest.fixture(scope="module")
def site(server):
    """Visit every page once; every test below asserts on what this collected."""
    from playwright import sync_api
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    timings = dict.fromkeys(("load + typeset + inspect", "solution toggles", "screenshots"), 0.0)
    blocked: list[tuple[str, str]] = []
    console_errors: list[tuple[str, str]] = []
    results: dict[str, dict] = {}
    toggles: dict[str, str] = {}
    started = time.perf_counter()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=_chromium(), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(PAGE_TIMEOUT_MS)

            def route(route_, req):
                if urlparse(req.url).hostname == "127.0.0.1":
                    route_.continue_()
                else:
                    blocked.append((current["page"], req.url))
                    route_.abort()

            current = {"page": ""}
            context.route("**/*", route)
            page = context.new_page()
            page.on("console", lambda msg: msg.type == "error" and console_errors.append(
                (current["page"], f"{msg.text} @ {msg.location.get('url', '')}")))
            page.on("pageerror", lambda error: console_errors.append((current["page"], f"uncaught: {error}")))
            for name in _pages():
                if time.perf_counter() - started > TOTAL_BUDGET_S:
                    pytest.fail(f"the browser test ran past its {TOTAL_BUDGET_S} s budget at {name}")
                current["page"] = name
                try:
                    t0 = time.perf_counter()
                    response = page.goto(server + name, wait_until="load")
                    page.evaluate(_WAIT_FOR_SCRIPTS)
                    info = page.evaluate(_INSPECT)
                    info["status"] = response.status if response else None
                    results[name] = info
                    timings["load + typeset + inspect"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    toggles[name] = _check_solution_toggle(page)
                    timings["solution toggles"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    # The first screen of each page (a full-page shot of a long chapter takes tens of seconds).
                    page.evaluate("window.scrollTo(0, 0)")
                    shot = SCREENSHOTS / (name.replace("/", "__").removesuffix(".html") + ".png")
                    page.screenshot(path=str(shot), timeout=PAGE_TIMEOUT_MS)
                    timings["screenshots"] += time.perf_counter() - t0
                except sync_api.Error as error:  # one bad page is reported, the others still checked
                    results[name] = {**_EMPTY, **results.get(name, {}), "status": None,
                                     "error": str(error).splitlines()[0]}
        finally:
            browser.close()
    timings["total (browser)"] = time.perf_counter() - started
    data = {"pages": results, "blocked": blocked, "console_errors": console_errors, "toggles": toggles,
            "timings": timings}
    yield data
    (SCREENSHOTS / "report.json").write_text(json.dumps(
        {k: v for k, v in data.items() if k != "pages"}, indent=1), encoding="utf-8")


def _check_solution_toggle(page) -> str:
    """'' when the page has no solution or its first one opens on click; otherwise what went wrong."""
    solutions = page.locator("div.solution.dropdown")
    if solutions.count() == 0:
        return ""
    first = solutions.first
    body = first.locator(".admonition-title ~ *").first
    button = first.locator("button.toggle-button, .admonition-title").first
    first.scroll_into_view_if_needed()
    if body.is_visible():
        return "solution visible before clicking its toggle"
    button.click()
    try:
        body.wait_for(state="visible", timeout=5000)
    except Exception:  # noqa: BLE001 - Playwright's TimeoutError; reported as a failure below
        return "solution stayed hidden after clicking its toggle"
    return ""


def test_every_page_loads(site):
    assert site["pages"], "no pages found"
    bad = {name: info.get("error", info["status"]) for name, info in site["pages"].items() if info["status"] != 200}
    assert not bad, bad


def test_no_broken_internal_links_anchors_or_images(site, server):
    ids = {name: set(info["ids"]) for name, info in site["pages"].items()}
    broken = []
    for name, info in site["pages"].items():
        for url in info["links"]:
            if not url.startswith(server):
                continue
            target, anchor = urldefrag(url)
            path = unquote(target[len(server):]) or "index.html"
            if path.endswith("/"):
                path += "index.html"
            if not (HTML_DIR / path).is_file():
                broken.append((name, url, "no such file"))
            elif anchor and path in ids and unquote(anchor) not in ids[path]:
                broken.append((name, url, "no such anchor"))
        broken += [(name, image["src"], "image did not load") for image in info["images"] if not image["ok"]]
    assert not broken, "\n".join(map(str, broken))


def test_mathjax_typesets_every_formula(site):
    raw = {name: info["rawMath"] + info["rawDelimiters"] for name, info in site["pages"].items()
           if info["rawMath"] or info["rawDelimiters"]}
    assert not raw, raw
    assert sum(info["mathCount"] for info in site["pages"].values()) > 0, "no formula found anywhere"


def test_mermaid_renders_to_svg(site):
    unrendered = {name: info["mermaidUnrendered"] for name, info in site["pages"].items() if info["mermaidUnrendered"]}
    assert not unrendered, unrendered


def test_saved_widget_states_render(site):
    missing = [name for name, info in site["pages"].items() if info["widgetStates"] and not info["widgetsRendered"]]
    assert not missing, f"pages whose saved widgets did not render: {missing}"


def test_exercise_solutions_toggle(site):
    problems = {name: problem for name, problem in site["toggles"].items() if problem}
    assert not problems, problems


def test_each_chapter_colab_link_opens_its_own_notebook(site):
    from llmbook.notebooks import colab_url

    wrong = {}
    for name, info in site["pages"].items():
        if not name.startswith("notebooks/"):
            continue
        expected = colab_url(f"notebooks/{Path(name).stem}.ipynb")
        if expected not in info["colab"]:
            wrong[name] = info["colab"]
    assert not wrong, wrong


def test_one_search_box_per_page(site):
    counts = {name: info["searchBoxes"] for name, info in site["pages"].items() if info["searchBoxes"] != 1}
    assert not counts, f"visible search boxes per page (want 1): {counts}"


def _bertviz_pages() -> set[str]:
    """Pages that embed a bertviz view: it loads its own require.js, d3 and jQuery from CDNs (a static
    heatmap beside it carries the same content offline), so its blocked loader is the view's, not the book's."""
    return {p.relative_to(HTML_DIR).as_posix() for p in HTML_DIR.rglob("*.html")
            if 'id="bertviz-' in p.read_text(encoding="utf-8", errors="replace")}


def test_no_console_errors_from_the_books_own_scripts(site):
    bertviz = _bertviz_pages()

    def third_party(page: str, message: str) -> bool:
        # Failures caused by a blocked CDN (bertviz's d3/jQuery) are the third party's, not the book's.
        if page in bertviz and "require is not defined" in message:
            return True  # bertviz's own script, whose require.js loader the blocked CDN did not deliver
        return any(host in message for host in THIRD_PARTY_CDN_HOSTS) or "ERR_NAME_NOT_RESOLVED" in message \
            or "net::ERR_FAILED" in message
    errors = [(page, message) for page, message in site["console_errors"]
              if not third_party(page, message) and not any(known in message for known in KNOWN_THEME_MESSAGES)]
    assert not errors, "\n".join(map(str, errors))


def test_only_known_third_party_views_reach_for_the_network(site):
    others = [(page, url) for page, url in site["blocked"] if urlparse(url).hostname not in THIRD_PARTY_CDN_HOSTS]
    assert not others, others
    bertviz = _bertviz_pages()
    book_scripts = [(page, url) for page, url in site["blocked"]
                    if re.search(r"mathjax|mermaid|require(\.min)?\.js|html-manager", url, re.I)
                    and not (page in bertviz and re.search(r"require(\.min)?\.js", url))]
    assert not book_scripts, f"the book's own scripts came from a CDN: {book_scripts}"


def test_print_the_time_of_each_check(site, capsys):
    """Not a check: prints, uncaptured, how long the browser took for each kind of check."""
    with capsys.disabled():
        print(f"\nbrowser test: {len(site['pages'])} pages, screenshots in {SCREENSHOTS}")
        for check, seconds in site["timings"].items():
            print(f"  {check:<26} {seconds:7.1f} s")
    assert site["timings"]["total (browser)"] < TOTAL_BUDGET_S
