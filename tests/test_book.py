"""Checks on the book itself: committed notebooks, table of contents, configuration, credits, README."""

import re
from pathlib import Path

import pytest
import yaml

from llmbook.data import DATASETS
from llmbook.notebooks import REF, REPOSITORY, check_notebook, colab_url, unprinted_numbers

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no chapter"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_publishable(path):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), "name chapters NN_topic.ipynb"
    assert check_notebook(path) == []


# Numbers in the prose that no output of their notebook prints, each with the reason it may stay.
# Anything else that unprinted_numbers finds is a number the text states but the code does not print:
# after a re-run, usually a stale one.
NOT_PRINTED = {
    "03_transformer.ipynb": {
        **dict.fromkeys(["0.69", "40.6", "44.2", "45.6", "48.6"], "tf-ex-budget's solution reports a 60-minute run"),
        "1.1": "a solution's arithmetic: the entropy floor of the smoothed target",
    },
    "04_gpt.ipynb": {"46.2": "PaLM's MFU, cited", "2.25": "64 x the printed 36 MiB"},
    "06_finetuning.ipynb": {"0.023": "difference of the two printed means"},
    "09_customer_service.ipynb": {"22.7": "MiniLM's parameter count, printed in chapter 10"},
    "10_finance_monitoring.ipynb": {
        "0.029": "difference of two printed macro-F1s",
        "70": "a bound ('below 70 %') on printed rates",
        "2.3": "ratio of the two printed throughputs",
    },
    "12_training_at_scale.ipynb": {
        "1.5": "ratio of the printed 18.3 and 12.2 MiB, and a worked example",
        "1.25": "a worked example",
        "0.0504": "what a solution's one-liner prints (0.0504 for 132 micro-batches)",
    },
    "13_deployment.ipynb": {"127.5": "torch's int8 range constant", "1.7": "difference of two printed macro-F1s"},
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_numbers_in_the_prose_are_printed(path):
    found = unprinted_numbers(path)
    allowed = NOT_PRINTED.get(path.name, {})
    unexplained = [f"cell {i}: {token} in ...{context}..." for i, token, context in found if token not in allowed]
    assert not unexplained, "the prose states numbers no output prints:\n" + "\n".join(unexplained)
    stale = sorted(set(allowed) - {token for _, token, _ in found})
    assert not stale, f"NOT_PRINTED lists numbers that are now printed or gone: {stale}"


def test_toc_lists_existing_files_and_every_notebook():
    files = toc_files()
    for entry in files:
        assert any((ROOT / f"{entry}{ext}").is_file() for ext in (".md", ".ipynb")), entry
    for path in NOTEBOOKS:
        assert f"notebooks/{path.stem}" in files, f"{path.name} is missing from _toc.yml"


def test_config_points_launch_buttons_at_the_setup_cells_repository():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"]["url"] == f"https://github.com/{REPOSITORY}"
    assert config["repository"]["branch"] == REF
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["execute"]["execute_notebooks"] == "off" and config["execute"]["raise_on_error"] is True
    for pattern in (".*", "**/.*", "_build", "README.md", "llmbook", "tests"):
        assert pattern in config["exclude_patterns"], pattern


def test_readme_states_the_commands_and_a_working_badge():
    readme = (ROOT / "README.md").read_text()
    assert colab_url("notebooks/00_getting_started.ipynb") in readme
    for command in ("pip install -r requirements.txt", "pytest", "pytest --nbmake notebooks/", "jupyter-book build ."):
        assert command in readme, command


def test_plain_pytest_is_the_whole_suite():
    """README promises one command: pytest's testpaths/addopts must include the notebooks through nbmake."""
    import tomllib

    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert options["testpaths"] == ["tests", "notebooks"]
    assert "--nbmake" in options["addopts"].split()


def _root_conftest():
    import importlib.util

    spec = importlib.util.spec_from_file_location("llmbook_root_conftest", ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_default_to_smoke_scale_under_nbmake_but_an_explicit_scale_wins():
    default = _root_conftest().default_notebook_scale
    environ = {}
    assert default(environ, nbmake_enabled=True) == "smoke" and environ["LLMBOOK_SCALE"] == "smoke"
    environ = {"LLMBOOK_SCALE": "cpu"}
    assert default(environ, nbmake_enabled=True) == "cpu" and environ["LLMBOOK_SCALE"] == "cpu"
    environ = {}
    assert default(environ, nbmake_enabled=False) is None and "LLMBOOK_SCALE" not in environ


@pytest.mark.parametrize("explicit, expected", [(None, "smoke"), ("cpu", "cpu")])
def test_pytest_runs_notebooks_at_smoke_scale_unless_a_scale_is_given(tmp_path, explicit, expected):
    """End to end: a notebook run by nbmake under the repository's conftest sees LLMBOOK_SCALE."""
    import json
    import os
    import subprocess
    import sys

    probe = tmp_path / "probe.ipynb"
    seen = tmp_path / "seen.txt"
    code = f"import os, pathlib\npathlib.Path({str(seen)!r}).write_text(os.environ.get('LLMBOOK_SCALE', '<unset>'))"
    probe.write_text(json.dumps({"cells": [{"cell_type": "code", "execution_count": None, "metadata": {},
                                            "outputs": [], "source": code}],
                                 "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                             "language": "python"}},
                                 "nbformat": 4, "nbformat_minor": 5}))
    env = {k: v for k, v in os.environ.items() if k != "LLMBOOK_SCALE"}
    if explicit:
        env["LLMBOOK_SCALE"] = explicit
    # -p conftest loads the repository's conftest.py for a notebook outside the repository.
    result = subprocess.run([sys.executable, "-m", "pytest", "-c", "pyproject.toml", "-p", "conftest", "-q",
                             "-p", "no:cacheprovider", str(probe)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    assert seen.read_text() == expected


def test_smoke_times_are_merged_into_one_json(tmp_path):
    import json

    write = _root_conftest().write_smoke_times
    path = tmp_path / "_build" / "smoke_times.json"
    write({"notebooks/00_a.ipynb": 3.0}, path)
    write({"notebooks/01_b.ipynb": 4.5}, path)
    data = json.loads(path.read_text())
    assert data["scale"] == "smoke"
    assert data["notebooks"] == {"notebooks/00_a.ipynb": 3.0, "notebooks/01_b.ipynb": 4.5}
    assert [p.name for p in path.parent.iterdir()] == ["smoke_times.json"]  # no temporary file left


def _ext_module(name):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, ROOT / "_ext" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_footer_doc_links_resolve_relative_to_each_page():
    resolve = _ext_module("llmbook_book").resolve_doc_links
    footer = yaml.safe_load((ROOT / "_config.yml").read_text())["html"]["extra_footer"]
    assert 'href="doc:book/data-credits"' in footer
    from_chapter = resolve(footer, lambda doc: "../" + doc + ".html")  # what Sphinx's pathto gives there
    assert 'href="../book/data-credits.html"' in from_chapter and "doc:" not in from_chapter


def test_bibliography_labels_are_author_year():
    from pybtex.database import Entry, Person

    label = _ext_module("llmbook_book").author_year_label

    def entry(*authors, year="2017"):
        return Entry("article", fields={"year": year}, persons={"author": [Person(a) for a in authors]})

    assert label(entry("Vaswani, Ashish", "Shazeer, Noam", "Parmar, Niki")) == "Vaswani et al., 2017"
    assert label(entry("Reimers, Nils", "Gurevych, Iryna", year="2019")) == "Reimers and Gurevych, 2019"
    assert label(entry("Rush, Alexander", year="2018")) == "Rush, 2018"
    assert "Temčinas" in (ROOT / "book" / "references.bib").read_text(encoding="utf-8")


def test_duplicate_inline_scripts_are_dropped():
    from types import SimpleNamespace as Script

    unique = _ext_module("llmbook_book").unique_scripts
    thebe = dict(body="const THEBE_JS_URL = 1")
    scripts = [Script(filename=None, attributes=thebe), Script(filename="a.js", attributes={}),
               Script(filename="", attributes=thebe)]
    assert unique(scripts) == scripts[:2]


def test_chapter_times_table_comes_from_the_stamps(tmp_path):
    import json

    book = _ext_module("llmbook_book")
    stamped = {"cells": [{"cell_type": "markdown", "source": ["# Chapter A\n"]}],
               "metadata": {"llmbook": {"scale": "cpu", "device": "cpu (2 cores)", "executed_in": "1391 s"}}}
    (tmp_path / "00_a.ipynb").write_text(json.dumps(stamped))
    (tmp_path / "01_b.ipynb").write_text(json.dumps({"cells": [], "metadata": {}}))
    smoke = tmp_path / "smoke_times.json"
    smoke.write_text(json.dumps({"notebooks": {"notebooks/00_a.ipynb": 12.34}}))
    rows = book.chapter_time_rows(tmp_path, smoke)
    table = book.chapter_times_markdown(rows, have_smoke=True)
    assert "| {doc}`Chapter A </notebooks/00_a>` | cpu | cpu (2 cores) | 23 min | 12 s |" in table
    assert "| {doc}`01_b </notebooks/01_b>` | not yet stamped | — | — | — |" in table
    assert "measured in CI" in book.chapter_times_markdown(rows, have_smoke=False)


def test_vendored_assets_are_checked_against_their_pinned_integrity():
    import base64
    import hashlib

    static = _ext_module("llmbook_static")
    data = b"tarball bytes"
    good = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    static.check_integrity(data, good, "x")
    with pytest.raises(static.VendorError, match="sha512 mismatch"):
        static.check_integrity(data + b"!", good, "x")
    for package in static.PACKAGES:  # every download is pinned to a version and a sha512
        assert package.integrity.startswith("sha512-") and re.fullmatch(r"\d+\.\d+\.\d+", package.version)


def test_ci_runs_what_the_readme_says():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    for command in ("pip install torch==2.13.0", "pip install -r requirements.txt", "run_pytest pytest ",
                    "python _ext/llmbook_static.py", "jupyter-book build . -W", "apt-get install",
                    "LLMBOOK_REQUIRE_BROWSER=1 pytest tests/test_book_site.py"):
        assert command in ci, command
    # the suite, then the build, then the browser test reading that build
    assert ci.index("run_pytest pytest ") < ci.index("jupyter-book build . -W") < ci.index("test_book_site.py")


def test_requirements_use_ranges_not_pins():
    lines = [l.split("#")[0].strip() for l in (ROOT / "requirements.txt").read_text().splitlines()]
    requirements = [l for l in lines if l and not l.startswith("-e")]
    assert not [l for l in requirements if "==" in l], "use version ranges, not exact pins"
    assert "jupyter-book>=1.0.4,<2" in requirements


def test_data_credits_cover_every_data_set():
    credits = (ROOT / "book" / "data-credits.md").read_text()
    for name, info in DATASETS.items():
        assert f"(`{name}`)" in credits, name
        licence = info.license.split(" (")[0]
        assert licence.split()[0] in credits, (name, licence)
    assert "www.manythings.org/anki and tatoeba.org" in credits  # attribution the Tatoeba licence requires


def test_cited_keys_exist_in_the_bibliography():
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    sources = [p.read_text() for p in (ROOT / "book").glob("*.md")] + [p.read_text() for p in NOTEBOOKS]
    cited = {key for text in sources for group in re.findall(r"\{cite[tp]?\}`([^`]+)`", text) for key in group.split(",")}
    assert cited and cited <= keys, cited - keys


def _declared_distributions() -> set[str]:
    """pyproject's dependencies and, transitively, what they require: what a Colab install brings."""
    import tomllib
    from importlib import metadata

    def name(requirement: str) -> str:
        return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [name(r) for r in project["dependencies"]]
    seen: set[str] = set()
    while todo:
        dist = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        try:
            requires = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [name(r) for r in requires if "extra ==" not in r]
    return seen


def test_every_notebook_import_is_a_declared_dependency():
    """On Colab the setup cell installs llmbook and its dependencies only: a notebook must import nothing else."""
    import sys
    from importlib import metadata

    declared = _declared_distributions() | {"llmbook"}
    preinstalled_on_colab = {"ipython"}  # the kernel itself
    providers = metadata.packages_distributions()
    missing = {}
    for path in NOTEBOOKS:
        for cell in json_cells(path):
            for module in re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", cell, flags=re.M):
                if module in sys.stdlib_module_names or module == "__future__":
                    continue
                dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
                if not dists & (declared | preinstalled_on_colab):
                    missing.setdefault(path.name, set()).add(module)
    assert not missing, f"add these to pyproject.toml dependencies: {missing}"


def json_cells(path: Path) -> list[str]:
    import json

    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
