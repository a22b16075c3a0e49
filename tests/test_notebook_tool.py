"""Tests of llmbook.notebooks: the setup cell, the checks on committed notebooks, and `run`."""

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from llmbook import notebooks
from llmbook.notebooks import REF, REPOSITORY, check_notebook, run_notebook, setup_cell_source, sync_setup_cell

GOOD_STAMP = {"scale": "cpu", "device": "cpu (2 cores, x86_64)", "python": "3.11.7", "torch": "2.13.0",
              "transformers": "5.24.0", "llmbook": "0.1.0", "date": "2026-11-28"}


def make_notebook(path, *, setup=True, stamp=GOOD_STAMP, outputs=None, kernel="python3", executed=True):
    cells = [new_markdown_cell("# Title")]
    if setup:
        cells.append(new_code_cell(setup_cell_source(), execution_count=1 if executed else None))
    body = new_code_cell("print('hi')", execution_count=2 if executed else None)
    body.outputs = outputs if outputs is not None else [new_output("stream", name="stdout", text="hi\n")]
    cells.append(body)
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python 3", "language": "python"}
    if stamp is not None:
        nb.metadata["llmbook"] = dict(stamp)
    nbformat.write(nb, path)
    return path


def test_setup_cell_installs_from_the_one_configured_place():
    source = setup_cell_source()
    assert f'"llmbook @ git+https://github.com/{REPOSITORY}@{REF}"' in source
    assert source.index("if IN_COLAB:") < source.index("%pip install")
    assert notebooks.colab_url("notebooks/x.ipynb") == (
        f"https://colab.research.google.com/github/{REPOSITORY}/blob/{REF}/notebooks/x.ipynb"
    )


def test_a_good_notebook_passes(tmp_path):
    assert check_notebook(make_notebook(tmp_path / "nb.ipynb")) == []


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"setup": False}, "not the book's setup cell"),
        ({"stamp": None}, "no complete provenance stamp"),
        ({"stamp": {**GOOD_STAMP, "scale": "smoke"}}, "produced at scale 'smoke'"),
        ({"kernel": "venv-kernel"}, "kernelspec is 'venv-kernel'"),
        ({"executed": False}, "were not executed"),
        ({"outputs": [new_output("error", ename="ZeroDivisionError", evalue="x", traceback=[])]}, "error output"),
        ({"outputs": [new_output("stream", name="stdout", text="saved to /home/ana/book/runs/x\n")]}, "local path"),
        ({"outputs": [new_output("stream", name="stderr", text="/tmp/ipykernel_1/1.py:1: UserWarning\n")]}, "local path"),
        ({"outputs": [new_output("execute_result", data={"text/plain": "'/work/venv/lib/site-packages/x'"},
                                 execution_count=2)]}, "local path"),
        ({"outputs": [new_output("stream", name="stderr", text="Traceback (most recent call last):\n")]}, "error to stderr"),
    ],
)
def test_each_problem_is_reported(tmp_path, kwargs, expected):
    problems = check_notebook(make_notebook(tmp_path / "nb.ipynb", **kwargs))
    assert any(expected in p for p in problems), problems


def test_urls_and_relative_paths_are_not_local_paths(tmp_path):
    text = "see https://github.com/llmbook/llmbook/tree/main and runs/finetune/checkpoint.pt\n"
    path = make_notebook(tmp_path / "nb.ipynb", outputs=[new_output("stream", name="stdout", text=text)])
    assert check_notebook(path) == []


def test_out_of_order_execution_is_reported(tmp_path):
    path = make_notebook(tmp_path / "nb.ipynb")
    nb = nbformat.read(path, 4)
    nb.cells[2].execution_count = 7
    nbformat.write(nb, path)
    assert any("top to bottom" in p for p in check_notebook(path))


def test_unreadable_notebook_is_a_problem_not_a_crash(tmp_path):
    path = tmp_path / "broken.ipynb"
    path.write_text("{ not json")
    assert "cannot be read" in check_notebook(path)[0]


def test_sync_setup_cell_inserts_or_replaces(tmp_path):
    path = make_notebook(tmp_path / "nb.ipynb", setup=False)
    assert sync_setup_cell(path) is True
    assert sync_setup_cell(path) is False
    nb = nbformat.read(path, 4)
    assert nb.cells[1].source == setup_cell_source() and nb.cells[2].source == "print('hi')"
    nb.cells[1].source = "import sys\nIN_COLAB = False  # an old setup cell"
    nbformat.write(nb, path)
    assert sync_setup_cell(path) is True
    assert nbformat.read(path, 4).cells[1].source == setup_cell_source()


def test_run_executes_in_place_and_stamps(tmp_path):
    nb = new_notebook(cells=[
        new_markdown_cell("# Tiny"),
        new_code_cell("import os\nfrom llmbook.runtime import get_scale\nprint(get_scale(), os.path.basename(os.getcwd()))"),
    ])
    folder = tmp_path / "chapter"
    folder.mkdir()
    path = folder / "tiny.ipynb"
    nbformat.write(nb, path)
    stamp = run_notebook(path, "smoke", timeout=120)
    result = nbformat.read(path, 4)
    assert result.metadata["llmbook"]["scale"] == stamp["scale"] == "smoke"
    assert result.cells[1].source == setup_cell_source()  # the setup cell was added
    assert result.cells[2].outputs[0]["text"].strip() == "smoke chapter"  # scale reached the kernel; cwd = folder
    assert "executed_in" in stamp


def test_run_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="Unknown scale 'big'"):
        run_notebook(tmp_path / "x.ipynb", "big")
    with pytest.raises(FileNotFoundError, match="No notebook"):
        run_notebook(tmp_path / "x.ipynb", "smoke")


def test_check_command_exit_codes(tmp_path, capsys):
    good = make_notebook(tmp_path / "good.ipynb")
    bad = make_notebook(tmp_path / "bad.ipynb", stamp=None)
    assert notebooks.main(["check", str(good)]) == 0
    assert "1 notebook(s) OK" in capsys.readouterr().out
    assert notebooks.main(["check", str(good), str(bad)]) == 1
    assert "bad.ipynb: no complete provenance stamp" in capsys.readouterr().out
