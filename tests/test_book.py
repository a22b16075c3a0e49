"""Checks on the book itself: committed notebooks, table of contents, configuration, credits, README."""

import re
from pathlib import Path

import pytest
import yaml

from llmbook.data import DATASETS
from llmbook.notebooks import REF, REPOSITORY, check_notebook, colab_url

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
    for command in ("pip install -r requirements.txt", "pytest", "LLMBOOK_SCALE=smoke pytest --nbmake notebooks/",
                    "jupyter-book build ."):
        assert command in readme, command


def test_ci_runs_what_the_readme_says():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    for command in ("pip install torch==2.13.0", "pip install -r requirements.txt", "LLMBOOK_SCALE=smoke",
                    "--nbmake notebooks/", "jupyter-book build . -W"):
        assert command in ci, command


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
