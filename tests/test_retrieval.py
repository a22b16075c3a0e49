"""Tests of llmbook.retrieval: exact embedding search, nearest centroids, contrastive fine-tuning, near-duplicates."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmbook.retrieval import (
    EmbeddingIndex,
    centroid_index,
    contrastive_finetune,
    encoder_embed_fn,
    in_batch_negatives_loss,
    near_duplicate_groups,
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from llmbook.pretrained import bundled_checkpoint_path

    return AutoTokenizer.from_pretrained(str(bundled_checkpoint_path()))


def _tiny_encoder(seed=0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=64)).eval()


def _brute_force(queries, items, k):
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    e = items / np.linalg.norm(items, axis=1, keepdims=True)
    scores = q @ e.T
    order = np.array([sorted(range(len(items)), key=lambda j: (-scores[i, j], j))[:k] for i in range(len(q))])
    return order, np.take_along_axis(scores, order, axis=1)


def test_search_is_the_exact_top_k_by_cosine():
    rng = np.random.default_rng(0)
    items, queries = rng.normal(size=(300, 8)), rng.normal(size=(40, 8))
    index = EmbeddingIndex(items * rng.uniform(0.1, 10, size=(300, 1)))  # row lengths must not matter
    hits = index.search(queries, k=7, chunk_size=16)
    order, scores = _brute_force(queries, items, 7)
    np.testing.assert_array_equal(hits.indices, order)
    np.testing.assert_allclose(hits.scores, scores, rtol=1e-5, atol=1e-6)
    assert hits.indices.shape == (40, 7) and hits.texts is None
    single = index.search(queries[3], k=2)
    assert single.indices.shape == (2,)
    np.testing.assert_array_equal(single.indices, order[3, :2])


def test_ties_go_to_the_lower_row():
    items = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    hits = EmbeddingIndex(items).search(np.array([1.0, 0.0]), k=3)
    assert hits.indices.tolist() == [0, 1, 3]
    np.testing.assert_allclose(hits.scores, [1.0, 1.0, 1.0])


def test_text_queries_go_through_embed_fn_and_hits_carry_texts():
    texts = ["card arrival", "lost card", "exchange rate", "top up"]
    vectors = {t: np.eye(4)[i] + 0.1 for i, t in enumerate(texts)}
    calls = []

    def embed(batch):
        calls.append(list(batch))
        return np.stack([vectors.get(t, np.eye(4)[2] + 0.1) for t in batch])

    index = EmbeddingIndex.build(texts, embed)
    assert calls == [texts] and len(index) == 4 and index.dim == 4
    hit = index.search("what rate do you use?", k=1)
    assert hit.texts == ["exchange rate"] and hit.indices.tolist() == [2]
    many = index.search(["lost card", "top up"], k=2)
    assert [row[0] for row in many.texts] == ["lost card", "top up"]


def test_build_with_a_transformers_encoder_matches_llmbook_embed(tokenizer):
    from llmbook.embed import embed_texts

    model = _tiny_encoder()
    texts = ["my card has not arrived", "what is the exchange rate", "I lost my phone"]
    index = EmbeddingIndex.build(texts, model=model, tokenizer=tokenizer, progress=False)
    expected = F.normalize(embed_texts(texts, tokenizer, model, progress=False), dim=1).numpy()
    np.testing.assert_allclose(index.embeddings, expected, rtol=1e-5, atol=1e-6)
    assert index.search(texts[1], k=1).indices.tolist() == [1]
    # A classifier's encoder embeds the same way.
    from llmbook.textclf import MeanPoolingClassifier

    wrapped = encoder_embed_fn(MeanPoolingClassifier(model, num_labels=3), tokenizer)(texts)
    np.testing.assert_allclose(F.normalize(wrapped, dim=1).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_index_errors_are_one_clear_line():
    index = EmbeddingIndex(np.eye(3))
    with pytest.raises(ValueError, match="k=4 but the index holds only 3 items"):
        index.search(np.ones(3), k=4)
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search(np.ones(3), k=0)
    with pytest.raises(ValueError, match="no embed_fn"):
        index.search("a text query", k=1)
    with pytest.raises(ValueError, match="dimension 2 but the index has 3"):
        index.search(np.ones(2), k=1)
    with pytest.raises(ValueError, match="row 1 is all zeros"):
        EmbeddingIndex(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        EmbeddingIndex(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match=r"\(n, dim\) matrix"):
        EmbeddingIndex(np.ones(3))
    with pytest.raises(ValueError, match="3 embeddings but 2 texts"):
        EmbeddingIndex(np.eye(3), texts=["a", "b"])
    with pytest.raises(ValueError, match="pass embed_fn, or model and tokenizer"):
        EmbeddingIndex.build(["a"])
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        EmbeddingIndex.build(["a", "  "], lambda t: np.ones((len(t), 2)))
    with pytest.raises(TypeError, match="texts must be a list of strings"):
        EmbeddingIndex.build("one string", lambda t: np.ones((len(t), 2)))
    with pytest.raises(ValueError, match="embed_fn returned 1 rows for 2 texts"):
        EmbeddingIndex.build(["a", "b"], lambda t: np.ones((1, 2)))
    with pytest.raises(ValueError, match="queries is empty"):
        EmbeddingIndex(np.eye(2), embed_fn=lambda t: np.ones((len(t), 2))).search([], k=1)


def test_centroid_index_is_the_getting_started_classifier():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(60, 5))
    labels = np.repeat(np.arange(4), 15)
    queries = rng.normal(size=(9, 5))
    # Chapter 00: normalise, add up per class (index_add_), normalise, argmax of the dot products.
    unit = F.normalize(torch.tensor(emb, dtype=torch.float32), dim=1)
    centroids = torch.zeros(4, 5).index_add_(0, torch.tensor(labels), unit)
    expected = (F.normalize(torch.tensor(queries, dtype=torch.float32), dim=1) @ F.normalize(centroids, dim=1).T)
    index = centroid_index(emb, labels, 4, names=["a", "b", "c", "d"])
    hits = index.search(queries, k=1)
    assert hits.indices[:, 0].tolist() == expected.argmax(dim=1).tolist()
    np.testing.assert_allclose(hits.scores[:, 0], expected.max(dim=1).values.numpy(), rtol=1e-5, atol=1e-6)
    assert index.texts == ["a", "b", "c", "d"]


def test_centroid_index_errors():
    with pytest.raises(ValueError, match="class 2 has no example"):
        centroid_index(np.eye(3), [0, 1, 3])
    with pytest.raises(ValueError, match="out of range for num_classes=2"):
        centroid_index(np.eye(3), [0, 1, 2], num_classes=2)
    with pytest.raises(TypeError, match="integer class ids"):
        centroid_index(np.eye(2), [0.0, 1.0])
    with pytest.raises(ValueError, match="labels of shape"):
        centroid_index(np.eye(2), [0, 1, 1])


def test_in_batch_negatives_loss_is_cross_entropy_over_scaled_cosines():
    torch.manual_seed(0)
    a, p = torch.randn(5, 4), torch.randn(5, 4)
    cos = F.normalize(a, dim=1) @ F.normalize(p, dim=1).T
    expected = -torch.log_softmax(20 * cos, dim=1).diagonal().mean()
    torch.testing.assert_close(in_batch_negatives_loss(a, p), expected)
    # A pair of the same class is not a negative: its column leaves that row's softmax.
    labels = torch.tensor([0, 0, 1, 2, 3])
    logits = 20 * cos
    masked = [torch.cat([logits[0, :1], logits[0, 2:]]), torch.cat([logits[1, 1:2], logits[1, 2:]])]
    rows = [-(torch.log_softmax(masked[0], 0)[0]), -(torch.log_softmax(masked[1], 0)[0])]
    rows += [-torch.log_softmax(logits[i], 0)[i] for i in range(2, 5)]
    torch.testing.assert_close(in_batch_negatives_loss(a, p, labels=labels), torch.stack(rows).mean())
    # Perfect, well-separated pairs give a loss near 0.
    eye = torch.eye(4)
    assert in_batch_negatives_loss(eye, eye).item() < 1e-6


def test_in_batch_negatives_loss_errors():
    with pytest.raises(ValueError, match=r"both be \(batch, dim\)"):
        in_batch_negatives_loss(torch.ones(3, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="scale must be a positive"):
        in_batch_negatives_loss(torch.ones(2, 2), torch.ones(2, 2), scale=0)
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        in_batch_negatives_loss(torch.ones(2, 2), torch.ones(2, 2), labels=torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="torch tensors"):
        in_batch_negatives_loss(np.ones((2, 2)), torch.ones(2, 2))


def test_contrastive_finetune_pulls_pairs_together(tokenizer):
    model = _tiny_encoder(seed=3)
    anchors = ["card not arrived", "lost my card", "exchange rate today", "top up failed",
               "pin is blocked", "cancel a transfer"]
    positives = ["where is my new card", "my card was stolen", "what rate do you use", "could not add money",
                 "too many wrong pin attempts", "stop my payment"]
    embed = encoder_embed_fn(model, tokenizer)

    def matched():
        return EmbeddingIndex(embed(positives)).search(embed(anchors).numpy(), k=1).indices[:, 0].tolist()

    torch.manual_seed(0)
    losses = contrastive_finetune(model, tokenizer, anchors * 4, positives * 4, epochs=6, batch_size=6, lr=3e-3,
                                  device="cpu", progress=False)
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    assert matched() == list(range(6))
    assert not model.training


def test_contrastive_finetune_drops_batches_without_negatives(tokenizer):
    model = _tiny_encoder()
    losses = contrastive_finetune(model, tokenizer, ["a", "b", "c"], ["d", "e", "f"], batch_size=2, lr=1e-4,
                                  device="cpu", progress=False)
    assert len(losses) == 1  # pairs 1-2 form a batch; the third pair alone has no negative
    losses = contrastive_finetune(model, tokenizer, ["a", "b", "c"] * 4, ["d", "e", "f"] * 4, epochs=3,
                                  batch_size=4, max_steps=5, device="cpu", progress=False)
    assert len(losses) == 5


def test_contrastive_finetune_errors(tokenizer):
    model = _tiny_encoder()
    with pytest.raises(ValueError, match="2 anchors but 1 positives"):
        contrastive_finetune(model, tokenizer, ["a", "b"], ["c"], progress=False)
    with pytest.raises(ValueError, match="need at least 2 pairs"):
        contrastive_finetune(model, tokenizer, ["a"], ["c"], progress=False)
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        contrastive_finetune(model, tokenizer, ["a", "b"], ["c", "d"], batch_size=1, progress=False)
    with pytest.raises(ValueError, match="lr must be a positive"):
        contrastive_finetune(model, tokenizer, ["a", "b"], ["c", "d"], lr=float("nan"), progress=False)
    with pytest.raises(ValueError, match="labels must have one entry per pair"):
        contrastive_finetune(model, tokenizer, ["a", "b"], ["c", "d"], labels=[0], progress=False)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        contrastive_finetune("model", tokenizer, ["a", "b"], ["c", "d"], progress=False)


def test_near_duplicate_groups_join_paraphrases_and_numbers():
    texts = [
        "how can I cancel purchase 113542617735902?",
        "how can I cancel purchase 732201349959",
        "What is the exchange rate for dollars",
        "I want to track my refund",
        "i want to track my refund please",
        "where is my parcel",
    ]
    groups = near_duplicate_groups(texts, threshold=0.8)
    assert groups.tolist() == [0, 0, 1, 2, 2, 3]
    assert near_duplicate_groups(texts, threshold=1.0).tolist() == [0, 0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="threshold"):
        near_duplicate_groups(texts, threshold=0)
    with pytest.raises(ValueError, match="texts is empty"):
        near_duplicate_groups([])
