"""Serve the book's JavaScript from the book itself, not from CDNs.

Many readers sit behind networks that block jsdelivr/cdnjs; without these files they see raw TeX, no
widget output and no diagrams. The files are not committed (about 30 MB): they are fetched from the npm
registry into ``_vendor/`` (git-ignored) by

    python _ext/llmbook_static.py          # or automatically by the first `jupyter-book build .`

and copied by Sphinx into ``_build/html/_static/vendor/``. Each tarball is pinned by version and
checked against its npm ``sha512`` integrity before anything is extracted. Only Python's standard
library is used (no node/npm needed).

If the files are absent and cannot be fetched (no network), the book still builds, with a warning
that names this command, and the pages then load these scripts from their CDNs as before.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENDOR_ROOT = REPO_ROOT / "_vendor"  # an extra html_static_path: its content lands in _static/
VENDOR_DIR = VENDOR_ROOT / "vendor"
REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True)
class NpmPackage:
    """One pinned npm tarball and which of its files the book serves."""

    name: str
    version: str
    integrity: str  # npm's "sha512-<base64>"
    folder: str  # under _vendor/vendor/
    keep: tuple[str, ...]  # path prefixes inside the tarball's "package/" folder
    drop_suffixes: tuple[str, ...] = (".map", ".d.ts")

    @property
    def tarball_url(self) -> str:
        short = self.name.split("/")[-1]
        return f"{REGISTRY}/{self.name}/-/{short}-{self.version}.tgz"


PACKAGES = (
    NpmPackage(
        "mathjax",
        "3.2.2",
        "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        "mathjax",
        # The combined component plus what it loads on demand: TeX extensions (autoload), the CHTML
        # fonts, the menu's accessibility pieces. The speech-rule maps (es5/sre, 4 MB) are left out.
        ("LICENSE", "es5/tex-mml-chtml.js", "es5/input/tex/extensions/", "es5/output/chtml/fonts/woff-v2/",
         "es5/a11y/", "es5/ui/"),
    ),
    NpmPackage(
        "requirejs",
        "2.3.7",
        "sha512-DouTG8T1WanGok6Qjg2SXuCMzszOo0eHeH9hDZ5Y4x8Je+9JB38HdTLT4/VA8OaUhBa0JPVHJ0pyBkM1z+pDsw==",
        "requirejs",
        ("require.js",),  # MIT; the licence is in the file's header
    ),
    NpmPackage(
        "@jupyter-widgets/html-manager",
        "1.0.6",  # the version myst-nb 1.x loads from its CDN
        "sha512-+Mn+Ra8wyIHrYaUpfmf9A3dsLkt/NuwzPQN8sthdxBD35VV5cOJbpmgMhNR27n/rmP3mKyEe0PWCJrtZrXTXDQ==",
        "html-manager",
        # embed-amd.js with the chunks and fonts it references; not the other bundles or source maps.
        ("LICENSE", "dist/"),
        drop_suffixes=(".map", ".d.ts", "dist/embed.js", "dist/libembed-amd.js"),
    ),
    NpmPackage(
        "mermaid",
        "11.12.1",  # sphinxcontrib-mermaid 2.1's default
        "sha512-UlIZrRariB11TY1RtTgUWp65tphtBv4CSq7vyS2ZZ2TgoMjs2nloq+wFqxiwcxlhHUvs7DPGgMjs2aeQxz5h9g==",
        "mermaid",
        ("LICENSE", "dist/mermaid.esm.min.mjs", "dist/chunks/mermaid.esm.min/"),
    ),
)

# What the Sphinx configuration points at, relative to _static/ (and to VENDOR_ROOT).
MATHJAX_JS = "vendor/mathjax/es5/tex-mml-chtml.js"
REQUIRE_JS = "vendor/requirejs/require.js"
WIDGETS_JS = "vendor/html-manager/dist/embed-amd.js"
MERMAID_JS = "vendor/mermaid/dist/mermaid.esm.min.mjs"
REQUIRED_FILES = (MATHJAX_JS, REQUIRE_JS, WIDGETS_JS, MERMAID_JS)
# The book's own small script (committed): tells require.js where the widget manager's fonts live.
OWN_STATIC = Path(__file__).resolve().parent / "static"
WIDGETS_PATHS_JS = "llmbook-widgets.js"


class VendorError(RuntimeError):
    """A tarball could not be fetched or did not match its pinned integrity."""


def check_integrity(data: bytes, integrity: str, what: str) -> None:
    """Raise VendorError unless ``data`` has npm's ``sha512-<base64>`` digest ``integrity``."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise VendorError(f"{what}: unsupported integrity algorithm {algorithm!r}; pin a sha512 integrity")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != expected:
        raise VendorError(f"{what}: sha512 mismatch (got {actual[:16]}..., pinned {expected[:16]}...); "
                          "the download is corrupt or the pin is wrong")


def extract(package: NpmPackage, data: bytes, destination: Path) -> int:
    """Extract the kept files of ``package``'s tarball bytes under ``destination``; return how many."""
    count = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member in archive.getmembers():
            if not member.isfile() or not member.name.startswith("package/"):
                continue
            relative = member.name[len("package/"):]
            if ".." in Path(relative).parts:
                raise VendorError(f"{package.name}: unsafe path {member.name!r} in the tarball")
            if not relative.startswith(package.keep) or relative.endswith(package.drop_suffixes):
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
            count += 1
    return count


def fetch(packages=PACKAGES, vendor_root: Path = VENDOR_ROOT, timeout: float = 30.0, log=print) -> None:
    """Download, verify and unpack every package into ``vendor_root/vendor`` (atomically per package)."""
    vendor_dir = vendor_root / "vendor"
    vendor_dir.mkdir(parents=True, exist_ok=True)
    # The folder ignores itself, so nothing fetched is ever committed by accident.
    (vendor_root / ".gitignore").write_text("# fetched by _ext/llmbook_static.py; never committed\n*\n")
    for package in packages:
        log(f"fetching {package.name}@{package.version} from {package.tarball_url}")
        try:
            with urllib.request.urlopen(package.tarball_url, timeout=timeout) as response:
                data = response.read()
        except OSError as error:
            raise VendorError(f"{package.name}: cannot download {package.tarball_url} ({error})") from error
        check_integrity(data, package.integrity, f"{package.name}@{package.version}")
        staging = Path(tempfile.mkdtemp(prefix=f".{package.folder}-", dir=vendor_dir))
        try:
            count = extract(package, data, staging)
            final = vendor_dir / package.folder
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log(f"  {count} files -> {final.relative_to(vendor_root.parent) if vendor_root.parent in final.parents else final}")


def missing_files(vendor_root: Path = VENDOR_ROOT) -> list[str]:
    """The entry-point files the configuration needs that are not present under ``vendor_root``."""
    return [name for name in REQUIRED_FILES if not (vendor_root / name).is_file()]


# --------------------------------------------------------------------------------------------- Sphinx


def _configure(app, config) -> None:
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    if missing_files() and os.environ.get("LLMBOOK_NO_FETCH") != "1":
        try:
            fetch(log=logger.info)
        except VendorError as error:
            logger.info(f"llmbook: {error}")
    missing = missing_files()
    if missing:
        logger.warning(
            "llmbook: the book's own copies of MathJax, require.js, the widget manager and mermaid are "
            f"missing ({', '.join(missing)}) and could not be fetched: pages will load them from CDNs. "
            "Run `python _ext/llmbook_static.py` with access to the npm registry, then rebuild.",
            type="llmbook", subtype="vendor",
        )
        return
    config.html_static_path = list(config.html_static_path) + [str(VENDOR_ROOT), str(OWN_STATIC)]
    config.mathjax_path = MATHJAX_JS
    config.mermaid_use_local = MERMAID_JS
    # myst-nb's ipywidgets_js: the same two scripts it would load from cdnjs/jsdelivr. The bundle holds
    # the built-in widgets (controls, output) that this book's saved states use.
    config.nb_ipywidgets_js = {REQUIRE_JS: {}, WIDGETS_PATHS_JS: {}, WIDGETS_JS: {}}


def setup(app):
    app.connect("config-inited", _configure, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    try:
        fetch()
    except VendorError as error:
        sys.exit(f"error: {error}")
    print("done; `jupyter-book build .` now serves these files from _static/vendor/")
