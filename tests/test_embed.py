import pytest
import torch

from llmbook.embed import cosine_similarity_matrix, embed_texts, mean_pool


def test_mean_pool_ignores_padding():
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    torch.testing.assert_close(pooled[0], hidden[0, :3].mean(dim=0))
    torch.testing.assert_close(pooled[1], hidden[1].mean(dim=0))
    changed = hidden.clone()
    changed[0, 3:] = 1e6  # whatever sits in padded positions must not matter
    torch.testing.assert_close(mean_pool(changed, mask), pooled)


def test_mean_pool_shape_errors():
    with pytest.raises(ValueError, match=r"\(batch, seq_len, dim\), got shape \(5, 8\)"):
        mean_pool(torch.randn(5, 8), torch.ones(5))
    with pytest.raises(ValueError, match=r"attention_mask shape \(2, 4\) does not match .* \(2, 5\)"):
        mean_pool(torch.randn(2, 5, 8), torch.ones(2, 4))
    with pytest.raises(ValueError, match="no real tokens"):
        mean_pool(torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [0, 0, 0]]))


def test_cosine_similarity_matrix():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    sim = cosine_similarity_matrix(a)
    torch.testing.assert_close(sim, torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]]))
    assert cosine_similarity_matrix(a, a[:2]).shape == (3, 2)
    with pytest.raises(ValueError, match=r"\(3, 2\) and \(2, 3\)"):
        cosine_similarity_matrix(a, torch.randn(2, 3))


@pytest.fixture(scope="module")
def tiny_encoder():
    """The bundled tokenizer with a small, randomly initialised BERT: fast, and enough to test batching."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from llmbook.pretrained import bundled_checkpoint_path

    tokenizer = AutoTokenizer.from_pretrained(bundled_checkpoint_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64)
    return tokenizer, BertModel(config).eval()


def test_embed_texts_does_not_depend_on_batching(tiny_encoder):
    tokenizer, model = tiny_encoder
    texts = ["a short one", "a considerably longer sentence that needs more tokens than the others", "mid length text"]
    together = embed_texts(texts, tokenizer, model, batch_size=3, progress=False)
    alone = torch.cat([embed_texts([t], tokenizer, model, progress=False) for t in texts])
    assert together.shape == (3, 32)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_embed_texts_bad_input(tiny_encoder):
    tokenizer, model = tiny_encoder
    with pytest.raises(TypeError, match="not a single string"):
        embed_texts("hello", tokenizer, model)
    with pytest.raises(ValueError, match="empty"):
        embed_texts([], tokenizer, model)
    with pytest.raises(TypeError, match="item 1 is int"):
        embed_texts(["ok", 3], tokenizer, model)


def test_mean_pool_rejects_non_tensors_and_weighted_masks():
    with pytest.raises(TypeError, match="hidden_states must be a torch.Tensor, got list"):
        mean_pool([[[1.0]]], torch.ones(1, 1))
    with pytest.raises(TypeError, match="attention_mask must be a torch.Tensor"):
        mean_pool(torch.randn(1, 2, 3), [[1, 1]])
    # a weight of 2 (or 0.5, -1, NaN) used to give a weighted average silently
    for bad in ([[2, 1]], [[0.5, 1.0]], [[1, -1]], [[1.0, float("nan")]]):
        with pytest.raises(ValueError, match="only 0 .* and 1"):
            mean_pool(torch.randn(1, 2, 3), torch.tensor(bad))
    hidden = torch.randn(1, 2, 3)
    torch.testing.assert_close(mean_pool(hidden, torch.tensor([[True, False]])), hidden[:, 0])


def test_cosine_similarity_matrix_accepts_integer_and_mixed_dtypes():
    ints = torch.tensor([[1, 0], [0, 2]])
    torch.testing.assert_close(cosine_similarity_matrix(ints), torch.eye(2))
    mixed = cosine_similarity_matrix(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    assert mixed.dtype == torch.float64 and abs(mixed.item() - 2**-0.5) < 1e-12
    with pytest.raises(TypeError, match="a must be a torch.Tensor"):
        cosine_similarity_matrix([[1.0, 0.0]])
    with pytest.raises(TypeError, match="b must be a torch.Tensor"):
        cosine_similarity_matrix(ints, [[1, 0]])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"progress": "no"}, TypeError, "progress must be True or False"),
        ({"progress": 0}, TypeError, "progress must be True or False"),
        ({"batch_size": 0}, ValueError, "batch_size must be at least 1"),
        ({"batch_size": "8"}, TypeError, "batch_size must be an integer"),
        ({"max_length": 0}, ValueError, "max_length must be at least 1"),
        ({"max_length": 64.0}, TypeError, "max_length must be an integer"),
        ({"device": "tpu"}, ValueError, "Unknown device 'tpu'"),
    ],
)
def test_embed_texts_rejects_bad_options(tiny_encoder, kwargs, error, message):
    tokenizer, model = tiny_encoder
    with pytest.raises(error, match=message):
        embed_texts(["a text", "another"], tokenizer, model, **kwargs)


def test_embed_texts_reads_device_names_like_get_device(tiny_encoder):
    tokenizer, model = tiny_encoder
    out = embed_texts(["a text"], tokenizer, model, device=" CPU ", progress=False)
    assert out.shape == (1, 32) and out.device.type == "cpu"


def test_embed_texts_rejects_the_wrong_model_or_tokenizer(tiny_encoder):
    from transformers import BertForSequenceClassification

    tokenizer, model = tiny_encoder
    with_head = BertForSequenceClassification(model.config).eval()
    with pytest.raises(TypeError, match="without last_hidden_state: pass the encoder itself"):
        embed_texts(["a text"], tokenizer, with_head, progress=False)
    with pytest.raises(ValueError, match="model has no parameters"):
        embed_texts(["a text"], tokenizer, torch.nn.Identity(), progress=False)
    with pytest.raises(TypeError, match="tokenizer must be a transformers tokenizer"):
        embed_texts(["a text"], "bert-base-uncased", model, progress=False)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        embed_texts(["a text"], tokenizer, "bert-base-uncased", progress=False)
