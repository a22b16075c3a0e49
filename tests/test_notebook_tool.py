"""Tests of llmbook.notebooks: the setup cell, the checks on committed notebooks, and `run`."""

import copy

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


def _png(width, height):
    """A real PNG of the given size, base64-encoded as notebooks store it."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_figures_wider_than_the_column_allows_are_reported(tmp_path):
    assert notebooks.png_size(_png(700, 300)) == (700, 300)
    assert notebooks.png_size("bm90IGEgcG5n") is None  # base64 of "not a png"
    for width, reported in [(990, False), (1309, True)]:
        image = new_output("display_data", data={"image/png": _png(width, 400), "text/plain": "<Figure>"})
        problems = check_notebook(make_notebook(tmp_path / f"nb{width}.ipynb", outputs=[image]))
        assert any(f"{width} px wide" in p and "figsize" in p for p in problems) == reported, problems


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


def _files_in(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_failed_run_leaves_the_file_byte_for_byte_untouched(tmp_path, capsys):
    # No setup cell: syncing it in would change the file, so this also catches a sync written too early.
    path = tmp_path / "failing.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("raise RuntimeError('boom')")]), path)
    before = path.read_bytes()
    assert notebooks.main(["run", "--scale", "smoke", "--timeout", "120", str(path)]) == 1
    assert path.read_bytes() == before
    assert _files_in(tmp_path) == ["failing.ipynb"]  # no temporary file left behind
    err = capsys.readouterr().err
    assert "did not run to the end; the file was left unchanged" in err and "boom" in err


def test_sync_setup_writes_atomically(tmp_path, monkeypatch):
    path = make_notebook(tmp_path / "nb.ipynb", setup=False)
    before = path.read_bytes()

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(notebooks.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        sync_setup_cell(path)
    assert path.read_bytes() == before  # the notebook is never truncated or half-written
    assert _files_in(tmp_path) == ["nb.ipynb"]  # and the temporary file is cleaned up


def test_writes_keep_the_notebook_format_and_permissions(tmp_path):
    path = make_notebook(tmp_path / "nb.ipynb", setup=False)
    path.chmod(0o640)
    assert sync_setup_cell(path) is True
    assert (path.stat().st_mode & 0o777) == 0o640
    assert _files_in(tmp_path) == ["nb.ipynb"]
    expected = tmp_path / "expected.ipynb"
    nbformat.write(nbformat.read(path, 4), expected)
    assert path.read_bytes() == expected.read_bytes()  # the same bytes nbformat.write gives


def _not_a_notebook(tmp_path, kind):
    if kind == "python file":
        path = tmp_path / "script.py"
        path.write_text("print('hi')\n")
    elif kind == "missing file":
        path = tmp_path / "missing.ipynb"
    elif kind == "invalid JSON":
        path = tmp_path / "broken.ipynb"
        path.write_text("{ not json")
    elif kind == "JSON that is no notebook":
        path = tmp_path / "list.ipynb"
        path.write_text("[1, 2]")
    else:
        path = tmp_path / "folder.ipynb"
        path.mkdir()
    return path


@pytest.mark.parametrize("command", [["run", "--scale", "smoke"], ["sync-setup"]])
@pytest.mark.parametrize("kind", ["python file", "missing file", "invalid JSON", "JSON that is no notebook", "folder"])
def test_commands_reject_non_notebooks_with_one_line(tmp_path, capsys, command, kind):
    good = make_notebook(tmp_path / "good.ipynb", setup=False)
    good_before = good.read_bytes()
    bad = _not_a_notebook(tmp_path, kind)
    bad_before = bad.read_bytes() if bad.is_file() else None
    # the good notebook comes first: nothing may run or change before every path is checked
    assert notebooks.main([*command, str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(bad) in err
    assert good.read_bytes() == good_before
    if bad_before is not None:
        assert bad.read_bytes() == bad_before


@pytest.mark.parametrize("bad", ["0", "-5", "soon"])
def test_run_timeout_must_be_positive(tmp_path, capsys, bad):
    path = make_notebook(tmp_path / "nb.ipynb")
    with pytest.raises(SystemExit):
        notebooks.main(["run", "--scale", "smoke", "--timeout", bad, str(path)])
    assert "must be a whole number of seconds, at least 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="timeout must be at least 1"):
        run_notebook(path, "smoke", timeout=int(bad) if bad.lstrip("-").isdigit() else 0)


# --- progress bars as text -------------------------------------------------------------------------

BAR_CELL = (
    "from tqdm.auto import tqdm\n"
    "for _ in tqdm(range(3), desc='demo'):\n"
    "    pass\n"
    "for _ in tqdm(range(2), desc='hidden', leave=False):\n"
    "    pass\n"
    "print('done')"
)
WIDGET_CELL = (
    "import ipywidgets\n"
    "slider = ipywidgets.IntSlider(value=4, description='n')\n"
    "other = ipywidgets.IntSlider(value=2)\n"
    "link = ipywidgets.jslink((slider, 'value'), (other, 'value'))  # shown by no output, yet part of the page\n"
    "display(ipywidgets.HBox([other, ipywidgets.Label('not a bar')]))\n"
    "slider"
)


def _view_ids(nb):
    return [o["data"][notebooks.WIDGET_VIEW_MIME]["model_id"] for c in nb.cells for o in c.get("outputs", [])
            if notebooks.WIDGET_VIEW_MIME in o.get("data", {})]


def _models(nb):
    return nb.metadata["widgets"][notebooks.WIDGET_STATE_MIME]["state"]


@pytest.fixture(scope="module")
def executed_with_bars():
    """A notebook really executed by nbclient (as `run` does): two tqdm.auto bars and two real widgets."""
    from nbclient import NotebookClient

    nb = new_notebook(cells=[new_code_cell(BAR_CELL), new_code_cell(WIDGET_CELL)])
    NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True).execute()
    return nb


def test_executed_notebook_really_saves_bars_as_widgets(executed_with_bars):
    # The situation the conversion exists for: views whose text is the initial state, final state in metadata.
    bar_views = [o for o in executed_with_bars.cells[0].outputs if notebooks.WIDGET_VIEW_MIME in o.get("data", {})]
    assert len(bar_views) == 2 and "0/3" in bar_views[0]["data"]["text/plain"]
    assert len(_view_ids(executed_with_bars)) == 4


def test_tqdm_widget_bar_becomes_one_line_with_its_final_state(executed_with_bars):
    nb = copy.deepcopy(executed_with_bars)
    models_before = _models(nb)
    bar_ids = _view_ids(nb)[:2]
    bar_models = notebooks._reachable(models_before, set(bar_ids))
    assert notebooks.progress_bars_to_text(nb) == 2
    [output] = nb.cells[0].outputs  # the bar line merged with the printed text, the hidden bar gone
    assert output["output_type"] == "stream" and output["name"] == "stdout"
    first, second = output["text"].splitlines()
    assert first.startswith("demo: 100%|██████████| 3/3 [") and first.endswith("it/s]")
    assert second == "done" and "hidden" not in output["text"]
    # The slider, the HBox of other widgets and all their models survive; the bars' models are gone.
    slider_views = _view_ids(nb)
    assert len(slider_views) == 2 and set(slider_views) == set(_view_ids(executed_with_bars)[2:])
    models = _models(nb)
    kept = notebooks._reachable(executed_with_bars.metadata["widgets"][notebooks.WIDGET_STATE_MIME]["state"],
                                set(slider_views))
    assert not (set(models) & bar_models)
    assert kept < set(models) and [m["model_name"] for k, m in models.items() if k not in kept] == ["LinkModel"]
    assert models[slider_views[1]]["state"]["value"] == 4
    before = nbformat.writes(nb)
    assert notebooks.progress_bars_to_text(nb) == 0 and nbformat.writes(nb) == before  # a second run: no change


def test_widget_state_key_goes_when_only_bars_used_it(executed_with_bars):
    nb = copy.deepcopy(executed_with_bars)
    nb.cells = nb.cells[:1]
    assert notebooks.progress_bars_to_text(nb) == 2
    assert "widgets" not in nb.metadata


def _notebook_with_bars(executed_with_bars, path):
    """A committed-style notebook at ``path`` whose cell 2 holds the widget progress bars of ``executed_with_bars``."""
    path = make_notebook(path)
    nb = nbformat.read(path, 4)
    nb.cells[2].outputs = copy.deepcopy(executed_with_bars.cells[0].outputs)
    nb.metadata["widgets"] = copy.deepcopy(executed_with_bars.metadata["widgets"])
    nbformat.write(nb, path)
    return path


def test_text_bars_command_converts_in_place_and_check_flags_bars(executed_with_bars, tmp_path, capsys):
    path = _notebook_with_bars(executed_with_bars, tmp_path / "bars.ipynb")
    assert check_notebook(path) == []  # the bar check is opt-in: notebooks 00-02 still hold widget bars
    assert notebooks.main(["check", "--text-bars", str(path)]) == 1
    assert "cell 2 has a tqdm widget progress bar" in capsys.readouterr().out
    assert notebooks.main(["text-bars", str(path)]) == 0
    assert "bars.ipynb: 2 progress bar(s) as text" in capsys.readouterr().out
    assert notebooks.main(["check", "--text-bars", str(path)]) == 0
    assert "demo: 100%|" in nbformat.read(path, 4).cells[2].outputs[0]["text"]
    assert _files_in(tmp_path) == ["bars.ipynb"]


def test_text_bars_command_does_not_rewrite_a_notebook_without_bars(tmp_path, capsys, monkeypatch):
    path = make_notebook(tmp_path / "plain.ipynb")
    before = path.read_bytes()

    def must_not_write(nb, path):
        raise AssertionError("a notebook without bars was rewritten")

    monkeypatch.setattr(notebooks, "write_notebook", must_not_write)
    assert notebooks.main(["text-bars", str(path)]) == 0
    assert "no progress bars, unchanged" in capsys.readouterr().out
    assert path.read_bytes() == before


def test_text_bars_command_rejects_non_notebooks_before_touching_any(executed_with_bars, tmp_path, capsys):
    path = _notebook_with_bars(executed_with_bars, tmp_path / "bars.ipynb")
    before = path.read_bytes()
    assert notebooks.main(["text-bars", str(path), str(tmp_path / "missing.ipynb")]) == 1
    assert "No notebook at" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_a_bar_without_saved_state_keeps_its_text_with_a_warning():
    view = {"model_id": "0123abcd", "version_major": 2, "version_minor": 0}
    text = "demo:   0%|          | 0/3 [00:00<?, ?it/s]"
    nb = new_notebook(cells=[new_code_cell("x", outputs=[
        new_output("display_data", data={notebooks.WIDGET_VIEW_MIME: view, "text/plain": text}),
        new_output("display_data", data={notebooks.WIDGET_VIEW_MIME: {**view, "model_id": "99"},
                                         "text/plain": "IntSlider(value=1)"}),
    ])])
    with pytest.warns(UserWarning, match=r"1 progress bar\(s\) had no saved widget state \(cells \[0\]\)"):
        assert notebooks.progress_bars_to_text(nb) == 1
    bar, slider = nb.cells[0].outputs
    assert bar["output_type"] == "stream" and bar["text"] == text + "\n"
    assert slider["data"]["text/plain"] == "IntSlider(value=1)"  # not a bar: left alone


def test_stderr_text_bars_become_their_final_line_on_stdout():
    final = "demo: 100%|██████████| 3/3 [00:00<00:00, 9.1it/s]"
    bars = f"\rdemo:   0%|          | 0/3 [00:00<?, ?it/s]\r{final}\n"
    mixed = "UserWarning: something real\n" + bars
    nb = new_notebook(cells=[new_code_cell("x", outputs=[
        new_output("stream", name="stdout", text="start\n"),
        new_output("stream", name="stderr", text=bars),
        new_output("stream", name="stderr", text=mixed),
    ])])
    assert notebooks.progress_bars_to_text(nb) == 1
    merged, kept = nb.cells[0].outputs
    assert merged["name"] == "stdout" and merged["text"] == f"start\n{final}\n"
    assert kept["name"] == "stderr" and kept["text"] == mixed  # a warning belongs on stderr: left as it is


@pytest.mark.parametrize("fraction, bar", [(0.0, " " * 10), (1.0, "█" * 10), (0.45, "████▌     ")])
def test_text_bar_draws_like_tqdm(fraction, bar):
    from tqdm.std import Bar

    assert notebooks._text_bar(fraction) == bar == format(Bar(fraction, 10), "")


def test_run_turns_progress_bars_into_text(tmp_path):
    path = tmp_path / "bars.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(BAR_CELL)]), path)
    run_notebook(path, "smoke", timeout=120)
    result = nbformat.read(path, 4)
    assert "widgets" not in result.metadata
    assert result.cells[-1].outputs[-1]["text"].startswith("demo: 100%|██████████| 3/3 [")


@pytest.mark.parametrize("line, is_bar", [
    ("training: 100%|██████████| 846/846 [04:35<00:00,  3.13it/s, val_accuracy=0.924]", True),
    ("embedding: 100%|██████████| 157/157 [01:03<00:00,  2.40batch/s]", True),
    ("demo:   0%|          | 0/3 [00:00<?, ?it/s]", True),
    ("12it [00:01, 9.50it/s]", True),
    ("long:   5%|▌         | 5/100 [1:02:03<20:00:00, 744.60s/it]", True),
    ("UserWarning: something real", False),
    ("step 3 [12:30, ok]", False),
    ("| a | table | row |", False),
])
def test_text_bar_lines_are_recognised_by_tqdm_times_and_rate(line, is_bar):
    assert bool(notebooks._TEXT_BAR_LINE.search(line)) is is_bar


def test_unprinted_numbers_match_at_the_prose_precision(tmp_path):
    nb = new_notebook(cells=[
        new_markdown_cell("### 2.1 Results\n\nRecall 0.29, 29.3 %, 61 %, −0.013 and 1,600 tweets; "
                          "stale 0.31 and 12.5 %; see §4.1."),
        new_code_cell("N = 1_600", outputs=[new_output("stream", name="stdout",
                                                       text="recall 0.2934, share 0.612, delta -0.0131, n 1,600\n")]),
    ])
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert [token for _, token, _ in notebooks.unprinted_numbers(path)] == ["0.31", "12.5"]
