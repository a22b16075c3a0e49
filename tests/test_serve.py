"""Tests of llmbook.serve: the secured sentiment service, the micro-batcher, masking and the load tester."""

import asyncio
import json
import logging
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
from fastapi.testclient import TestClient  # noqa: E402

from llmbook import serve  # noqa: E402
from llmbook.serve import (  # noqa: E402
    MicroBatcher,
    ServiceSettings,
    create_app,
    load_tokens,
    luhn_valid,
    mask_pii,
    run_load_test,
)

TOKEN = "test-token-0123456789abcdef"
LABELS = ["Bearish", "Bullish", "Neutral"]


class KeywordModel:
    """A stand-in classifier: 'down' -> Bearish, 'up' -> Bullish, else Neutral; records its calls."""

    labels = LABELS

    def __init__(self, version="v1", fail=False):
        self.version = version
        self.fail = fail
        self.calls = []

    def predict(self, texts):
        if self.fail:
            raise RuntimeError("secret internal detail: /home/user/model.bin is corrupt")
        self.calls.append(list(texts))
        probs = np.full((len(texts), 3), 0.1, dtype=np.float32)
        for i, text in enumerate(texts):
            probs[i, 0 if "down" in text else 1 if "up" in text else 2] = 0.8
        return probs


def make_client(model=None, **settings):
    settings.setdefault("tokens", [TOKEN])
    app = create_app(model or KeywordModel(), ServiceSettings(**settings))
    return TestClient(app, raise_server_exceptions=False)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_one_text_and_a_list_get_their_own_labels_and_the_model_version():
    with make_client() as client:
        one = client.post("/v1/sentiment", json={"texts": "Shares up 5%"}, headers=AUTH)
        many = client.post("/v1/sentiment", json={"texts": ["Stocks down", "Flat day", "up again"]}, headers=AUTH)
    assert one.status_code == 200 and many.status_code == 200
    assert one.json()["model_version"] == "v1" and one.headers["x-model-version"] == "v1"
    assert [r["label"] for r in one.json()["results"]] == ["Bullish"]
    assert [r["label"] for r in many.json()["results"]] == ["Bearish", "Neutral", "Bullish"]
    assert set(many.json()["results"][0]["probabilities"]) == set(LABELS)


def test_healthz_and_metrics_need_no_token_and_report_the_version():
    with make_client() as client:
        client.post("/v1/sentiment", json={"texts": ["up", "down"]}, headers=AUTH)
        health = client.get("/healthz")
        metrics = client.get("/metrics")
    assert health.status_code == 200 and health.json() == {"status": "ok", "model_version": "v1"}
    assert metrics.status_code == 200
    text = metrics.text
    assert 'llmbook_requests_total{endpoint="/v1/sentiment",status="200"} 1.0' in text
    assert 'llmbook_model_info{version="v1"} 1.0' in text
    assert "llmbook_batch_size_count 1.0" in text
    assert "llmbook_request_latency_seconds_bucket" in text


def test_metrics_can_require_the_token():
    with make_client(metrics_require_auth=True) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=AUTH).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "},
                                     {"Authorization": TOKEN}])
def test_missing_or_malformed_token_is_401(headers):
    with make_client() as client:
        response = client.post("/v1/sentiment", json={"texts": "up"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["model_version"] == "v1"


def test_wrong_token_is_403():
    with make_client() as client:
        response = client.post("/v1/sentiment", json={"texts": "up"},
                               headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert response.status_code == 403


@pytest.mark.parametrize("body", [
    {"texts": ""},
    {"texts": "   "},
    {"texts": []},
    {"texts": 5},
    {"texts": ["fine", 3]},
    {"texts": None},
    {},
    {"texts": "ok", "extra": 1},
    {"texts": ["a"] * 9},  # more than max_texts=8
    {"texts": "x" * 101},  # longer than max_text_chars=100
    ["not", "an", "object"],
], ids=["empty", "blank", "empty-list", "int", "int-in-list", "null", "missing", "extra-field", "too-many",
        "too-long", "list-body"])
def test_invalid_requests_are_422_without_echoing_the_input(body):
    with make_client(max_texts=8, max_text_chars=100) as client:
        response = client.post("/v1/sentiment", json=body, headers=AUTH)
    assert response.status_code == 422
    payload = response.json()
    assert payload["error"] == "invalid request" and payload["model_version"] == "v1"
    assert all(set(detail) == {"loc", "msg"} for detail in payload["details"])


def test_422_never_echoes_personal_data():
    with make_client(max_text_chars=40) as client:
        response = client.post("/v1/sentiment", json={"texts": "mail me at jane.doe@example.com " * 3},
                               headers=AUTH)
    assert response.status_code == 422
    assert "jane.doe" not in response.text


def test_body_that_is_not_json_is_422():
    with make_client() as client:
        response = client.post("/v1/sentiment", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422


def test_oversized_body_is_413_declared_or_streamed():
    with make_client(max_body_bytes=1000, max_text_chars=100_000) as client:
        declared = client.post("/v1/sentiment", json={"texts": "up " * 1000}, headers=AUTH)

        def chunks():
            yield b'{"texts": "'
            for _ in range(50):
                yield b"up " * 100
            yield b'"}'

        streamed = client.post("/v1/sentiment", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
        small = client.post("/v1/sentiment", json={"texts": "up"}, headers=AUTH)
    assert declared.status_code == 413 and declared.json()["model_version"] == "v1"
    assert declared.headers["x-model-version"] == "v1"
    assert streamed.status_code == 413 and streamed.json()["model_version"] == "v1"
    assert small.status_code == 200


def test_unknown_path_404_and_wrong_method_405():
    with make_client() as client:
        assert client.get("/v2/nothing").status_code == 404
        assert client.get("/v1/sentiment", headers=AUTH).status_code == 405


def test_model_failure_is_500_without_a_stack_trace():
    with make_client(KeywordModel(fail=True)) as client:
        response = client.post("/v1/sentiment", json={"texts": "up"}, headers=AUTH)
    assert response.status_code == 500
    assert response.json()["error"] == "internal error" and response.json()["request_id"]
    assert "Traceback" not in response.text and "secret" not in response.text and "model.bin" not in response.text


def test_logs_mask_personal_data(caplog):
    with caplog.at_level(logging.INFO, logger="llmbook.serve"):
        with make_client() as client:
            client.post("/v1/sentiment", headers=AUTH,
                        json={"texts": "up! call +44 20 7946 0958 or write to jane.doe@example.com"})
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "[PHONE]" in logged and "[EMAIL]" in logged
    assert "jane.doe" not in logged and "7946" not in logged


def test_tokens_from_environment_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv(serve.TOKENS_ENV_VAR, f" {TOKEN} , other-token-0123456789abc ")
    assert load_tokens() == [TOKEN, "other-token-0123456789abc"]
    with make_client(tokens=()) as client:
        assert client.post("/v1/sentiment", json={"texts": "up"}, headers=AUTH).status_code == 200
    file = tmp_path / "tokens.txt"
    file.write_text("# service tokens\nfile-token-0123456789abcdef\n\n")
    assert load_tokens(file) == ["file-token-0123456789abcdef"]


def test_no_or_short_tokens_refuse_to_start(tmp_path, monkeypatch):
    monkeypatch.delenv(serve.TOKENS_ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="no API token"):
        create_app(KeywordModel(), ServiceSettings())
    monkeypatch.setenv(serve.TOKENS_ENV_VAR, "short")
    with pytest.raises(ValueError, match="shorter than 16"):
        load_tokens()


def test_token_comparison_uses_compare_digest(monkeypatch):
    calls = []
    real = serve.hmac.compare_digest
    monkeypatch.setattr(serve.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert serve._token_matches("abc", [b"abc", b"def"]) is True
    assert len(calls) == 2  # every token compared: no early exit
    assert serve._token_matches("xyz", [b"abc"]) is False


def test_hot_swap_through_the_admin_endpoint(tmp_path, monkeypatch):
    (tmp_path / serve.MODEL_FILE).write_bytes(b"weights v2")
    (tmp_path / serve.META_FILE).write_text("{}")
    monkeypatch.setattr(serve, "load_model_dir", lambda folder, threads=None: KeywordModel(
        version=(folder / serve.MODEL_FILE).read_text()))
    with make_client(model_dir=tmp_path, reload_interval_s=60) as client:
        before = client.post("/v1/sentiment", json={"texts": "up"}, headers=AUTH).json()["model_version"]
        assert client.post("/v1/admin/reload").status_code == 401
        swapped = client.post("/v1/admin/reload", headers=AUTH)
        after = client.post("/v1/sentiment", json={"texts": "up"}, headers=AUTH).json()["model_version"]
        metrics = client.get("/metrics").text
    assert (before, swapped.status_code, swapped.json()["model_version"], after) == ("v1", 200, "weights v2", "weights v2")
    assert 'llmbook_model_info{version="weights v2"} 1.0' in metrics and 'version="v1"' not in metrics


def test_reload_without_a_model_folder_is_409():
    with make_client() as client:
        assert client.post("/v1/admin/reload", headers=AUTH).status_code == 409


def test_the_watcher_swaps_a_changed_file_and_keeps_the_old_model_on_a_broken_one(tmp_path, monkeypatch):
    (tmp_path / serve.MODEL_FILE).write_bytes(b"v1")
    (tmp_path / serve.META_FILE).write_text("{}")

    def fake_load(folder, threads=None):
        content = (folder / serve.MODEL_FILE).read_text()
        if content == "broken":
            raise ValueError("cannot parse")
        return KeywordModel(version=content)

    monkeypatch.setattr(serve, "load_model_dir", fake_load)
    with make_client(model_dir=tmp_path, reload_interval_s=0.05) as client:
        (tmp_path / serve.MODEL_FILE).write_bytes(b"v2-new")
        version = _wait_for_version(client, "v2-new")
        (tmp_path / serve.MODEL_FILE).write_bytes(b"broken")
        time.sleep(0.3)
        still = client.post("/v1/sentiment", json={"texts": "up"}, headers=AUTH)
    assert version == "v2-new"
    assert still.status_code == 200 and still.json()["model_version"] == "v2-new"


def _wait_for_version(client, wanted, timeout=5.0):
    deadline = time.time() + timeout
    version = None
    while time.time() < deadline:
        version = client.get("/healthz").json()["model_version"]
        if version == wanted:
            break
        time.sleep(0.05)
    return version

# --- masking ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("write to jane.doe@example.com today", "write to [EMAIL] today"),
    ("Contact: IR@apple.co.uk.", "Contact: [EMAIL]."),
    ("card 4111 1111 1111 1111 was charged", "card [CARD] was charged"),
    ("card 4111-1111-1111-1111", "card [CARD]"),
    ("5500005555555559", "[CARD]"),
    ("call +1 (555) 123-4567 now", "call [PHONE] now"),
    ("call +44 20 7946 0958", "call [PHONE]"),
    ("(555) 123-4567", "[PHONE]"),
    ("555-123-4567 or 555.123.4567", "[PHONE] or [PHONE]"),
    ("手机 13812345678 联系", "手机 [PHONE] 联系"),
    ("a@b.io and +86 138 1234 5678", "[EMAIL] and [PHONE]"),
])
def test_mask_pii_masks(text, expected):
    assert mask_pii(text) == expected


@pytest.mark.parametrize("text", [
    "$AAPL up 3.5% to $189.25 after Q3 2023 earnings",
    "Revenue of 1,234,567.89 on 2024-01-15",
    "Order 1234 5678 9012 3456 shipped",  # 16 digits that fail the Luhn check: not a card
    "S&P 500 closes at 4,783.45; Dow +0.4%",
    "FY2023-2024 guidance; 10-K filed",
    "@elonmusk says TSLA to the moon",
    "Shares fell 12345678901 basis points",  # 11 digits starting 12: not a Chinese mobile number
])
def test_mask_pii_leaves_ordinary_text_alone(text):
    assert mask_pii(text) == text


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112") and not luhn_valid("12a4")


def test_mask_pii_needs_a_string():
    with pytest.raises(TypeError, match="needs a str"):
        mask_pii(None)

# --- the micro-batcher --------------------------------------------------------------------------


def test_batcher_gives_every_request_its_own_answers_in_order_under_concurrency():
    calls = []

    def double(items):
        calls.append(list(items))
        time.sleep(0.002)
        return [2 * x for x in items]

    async def main():
        batcher = MicroBatcher(double, max_batch_size=16, max_wait_ms=5)
        rng = np.random.default_rng(0)

        async def one(i):
            await asyncio.sleep(float(rng.uniform(0, 0.02)))
            items = [1000 * i + j for j in range(1 + i % 4)]
            return items, await batcher.submit(items)

        results = await asyncio.gather(*(one(i) for i in range(100)))
        await batcher.aclose()
        return results, batcher.batch_sizes

    results, sizes = asyncio.run(main())
    for items, answers in results:
        assert answers == [2 * x for x in items]
    assert sum(sizes) == sum(len(items) for items, _ in results)
    assert max(sizes) > 4 and max(sizes) <= 16  # requests were grouped, never past the limit
    flat = [x for call in calls for x in call]
    assert sorted(flat) == sorted(x for items, _ in results for x in items)  # each item computed exactly once


def test_batcher_never_splits_a_request_and_runs_oversized_ones_alone():
    async def main():
        batcher = MicroBatcher(lambda items: list(items), max_batch_size=4, max_wait_ms=20)
        answers = await asyncio.gather(batcher.submit([1, 2, 3]), batcher.submit([4, 5]), batcher.submit(list(range(10))))
        await batcher.aclose()
        return answers, batcher.batch_sizes

    answers, sizes = asyncio.run(main())
    assert answers == [[1, 2, 3], [4, 5], list(range(10))]
    assert sorted(sizes) == [2, 3, 10]


def test_batcher_disabled_runs_each_request_alone():
    async def main():
        batcher = MicroBatcher(lambda items: [x + 1 for x in items], enabled=False)
        answers = await asyncio.gather(*(batcher.submit([i, i]) for i in range(10)))
        await batcher.aclose()
        return answers, batcher.batch_sizes

    answers, sizes = asyncio.run(main())
    assert answers == [[i + 1, i + 1] for i in range(10)] and sizes == [2] * 10


def test_batcher_sends_a_failure_to_every_request_of_the_batch_and_keeps_serving():
    state = {"fail": True}

    def flaky(items):
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("model crashed")
        return list(items)

    async def main():
        batcher = MicroBatcher(flaky, max_wait_ms=20)
        first = await asyncio.gather(batcher.submit([1]), batcher.submit([2]), return_exceptions=True)
        second = await batcher.submit([3])
        await batcher.aclose()
        return first, second

    first, second = asyncio.run(main())
    assert all(isinstance(e, RuntimeError) for e in first) and second == [3]


def test_batcher_rejects_a_function_with_the_wrong_number_of_results():
    async def main():
        batcher = MicroBatcher(lambda items: items[:1], max_wait_ms=1)
        try:
            return await batcher.submit([1, 2])
        finally:
            await batcher.aclose()

    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        asyncio.run(main())


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_wait_ms": -1}, {"enabled": "yes"}])
def test_batcher_checks_its_arguments(kwargs):
    with pytest.raises((TypeError, ValueError)):
        MicroBatcher(list, **kwargs)

# --- a real server on loopback --------------------------------------------------------------------


@pytest.fixture
def live_server():
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    model = KeywordModel()
    app = create_app(model, ServiceSettings(tokens=[TOKEN], max_wait_ms=10))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", model
    server.should_exit = True
    thread.join(timeout=20)
    assert not thread.is_alive()


def test_live_server_answers_every_request_of_a_load_test(live_server):
    import httpx

    url, model = live_server
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    assert httpx.post(f"{url}/v1/sentiment", json={"texts": "up"}).status_code == 401
    texts = ["stocks up", "stocks down", "flat"]
    result = asyncio.run(run_load_test(f"{url}/v1/sentiment", texts, token=TOKEN, concurrency=8,
                                       duration_s=20, max_requests=80))
    summary = result.summary()
    assert summary["requests"] == 80 and summary["failed"] == 0
    assert all(r["version"] == "v1" for r in result.records)
    assert max(len(call) for call in model.calls) > 1  # concurrent requests were batched together
    metrics = httpx.get(f"{url}/metrics").text
    assert 'llmbook_requests_total{endpoint="/v1/sentiment",status="200"} 80.0' in metrics


def test_load_test_records_connection_errors_and_stops_by_itself():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.time()
    result = asyncio.run(run_load_test(f"http://127.0.0.1:{port}/v1/sentiment", ["x"], token=TOKEN,
                                       concurrency=2, duration_s=0.5, max_requests=1000, timeout_s=1))
    assert time.time() - started < 10
    assert result.records and result.failed == len(result.records)
    assert {r["status"] for r in result.records} == {0} and result.records[0]["error"]

# --- the real thing: an ONNX model folder served by `python -m llmbook.serve` -----------------------


@pytest.fixture(scope="module")
def onnx_model_dirs(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from transformers import AutoTokenizer, BertConfig, BertModel

    from llmbook import compress
    from llmbook.pretrained import bundled_checkpoint_path
    from llmbook.textclf import MeanPoolingClassifier

    tokenizer = AutoTokenizer.from_pretrained(bundled_checkpoint_path())
    folder = tmp_path_factory.mktemp("served")
    files = []
    for seed in (0, 1):
        import torch

        torch.manual_seed(seed)
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
        model = MeanPoolingClassifier(BertModel(config), num_labels=3).eval()
        files.append(compress.export_onnx(model, folder / f"model{seed}.onnx"))
    return tokenizer, files, folder


def test_server_process_serves_an_onnx_folder_and_hot_swaps_it(onnx_model_dirs, tmp_path):
    import httpx

    tokenizer, (first, second), _ = onnx_model_dirs
    model_dir = serve.save_model_dir(tmp_path / "model", first, tokenizer, LABELS, max_length=32)
    local = serve.load_model_dir(model_dir)
    assert local.version == serve.file_version(first)
    probs = local.predict(["stocks up", "a longer tweet about the market today"])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    token_file = tmp_path / "tokens.txt"
    token_file.write_text(TOKEN + "\n")
    with serve.ServerProcess(model_dir, token_file, max_wait_ms=1) as server:
        answer = httpx.post(f"{server.url}/v1/sentiment", json={"texts": ["stocks up", "down"]}, headers=AUTH)
        assert answer.status_code == 200 and answer.json()["model_version"] == local.version
        np.testing.assert_allclose([r["probabilities"]["Bearish"] for r in answer.json()["results"]],
                                   local.predict(["stocks up", "down"])[:, 0], atol=1e-5)
        assert httpx.post(f"{server.url}/v1/sentiment", json={"texts": "x"}).status_code == 401
        serve.save_model_dir(model_dir, second, tokenizer, LABELS, max_length=32)  # atomic replace
        deadline = time.time() + 30
        while time.time() < deadline:
            version = httpx.get(f"{server.url}/healthz").json()["model_version"]
            if version == serve.file_version(second):
                break
            time.sleep(0.2)
        assert version == serve.file_version(second)
        process = server.process
    assert process.poll() is not None  # stopped by the context manager


def test_load_model_dir_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_model_dir"):
        serve.load_model_dir(tmp_path)


def test_ray_deployment_module_imports_without_a_model_and_its_policy_is_valid(monkeypatch):
    pytest.importorskip("ray.serve")
    monkeypatch.delenv("LLMBOOK_SERVE_MODEL_DIR", raising=False)
    from ray.serve.config import AutoscalingConfig

    from llmbook import serve_ray

    config = AutoscalingConfig(**serve_ray.AUTOSCALING)
    assert config.min_replicas == 1 and config.max_replicas >= 2
    assert serve_ray.app is None
