"""Tests of llmbook.transformer: shapes, masking, agreement with PyTorch, decoding and error paths."""

import inspect
import itertools
import math

import pytest
import torch
from torch import nn

from llmbook.transformer import (
    DecoderLayer,
    EncoderLayer,
    PositionalEncoding,
    PositionwiseFeedForward,
    Seq2SeqTransformer,
    beam_search,
    copy_weights_from_torch_encoder_layer,
    cross_attention_weights,
    greedy_decode,
    load_translation_checkpoint,
    normalise_tatoeba,
    save_translation_checkpoint,
    sinusoidal_positional_encoding,
    tatoeba_test_set,
    token_budget_batches,
    train_translation_model,
    translate,
)

PAD, BOS, EOS = 0, 1, 2


def small_model(seed: int = 0) -> Seq2SeqTransformer:
    """Source vocabulary 23, target vocabulary 19, in evaluation mode (dropout off)."""
    torch.manual_seed(seed)
    return Seq2SeqTransformer(23, 19, d_model=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                              d_ff=64, dropout=0.1, max_len=40, pad_id=PAD).eval()


def random_ids(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=g)


# ------------------------------------------------------------------------------------------ shapes


def test_positional_encoding_matches_the_formula():
    table = sinusoidal_positional_encoding(50, 16)
    assert table.shape == (50, 16)
    for pos, i in [(0, 0), (3, 2), (17, 5), (49, 7)]:
        angle = pos / 10000 ** (2 * i / 16)
        assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
        assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    # Every position has the same norm: sqrt(d_model / 2) (one sin² + cos² = 1 per pair).
    torch.testing.assert_close(table.norm(dim=1), torch.full((50,), math.sqrt(8.0)))


def test_positional_encoding_module_adds_the_table():
    pe = PositionalEncoding(16, max_len=20).eval()
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(pe(x) - x, sinusoidal_positional_encoding(7, 16).expand(3, 7, 16))
    assert "pe" not in pe.state_dict()  # a buffer computed from the formula, not a weight


def test_layer_and_model_shapes():
    torch.manual_seed(0)
    x, memory = torch.randn(3, 7, 32), torch.randn(3, 5, 32)
    assert PositionwiseFeedForward(32, 64)(x).shape == (3, 7, 32)
    assert EncoderLayer(32, 4, 64)(x).shape == (3, 7, 32)
    assert DecoderLayer(32, 4, 64)(x, memory).shape == (3, 7, 32)
    model = small_model()
    src, tgt = random_ids(3, 5, 23, 1), random_ids(3, 7, 19, 2)
    memory = model.encode(src)
    assert memory.shape == (3, 5, 32)
    assert model.decode(tgt, memory, model.make_src_mask(src)).shape == (3, 7, 19)
    assert model(src, tgt).shape == (3, 7, 19)
    assert model.make_src_mask(src).shape == (3, 1, 1, 5)
    assert model.make_tgt_mask(tgt).shape == (3, 1, 7, 7)


def test_weight_tying_and_sharing():
    tied = Seq2SeqTransformer(30, 30, d_model=16, num_heads=2, d_ff=32, share_embeddings=True)
    assert tied.output.weight is tied.tgt_embed.weight is tied.src_embed.weight
    untied = Seq2SeqTransformer(30, 30, d_model=16, num_heads=2, d_ff=32, tie_output=False)
    assert untied.output.weight is not untied.tgt_embed.weight
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == 2 * 30 * 16  # one embedding matrix and one output matrix saved
    assert torch.all(tied.src_embed.weight[0] == 0)  # the padding row starts at zero


# ------------------------------------------------------------------------------------------ masking


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_layer_ignores_padded_positions(norm_first):
    torch.manual_seed(0)
    layer = EncoderLayer(32, 4, 64, norm_first=norm_first).eval()
    x = torch.randn(2, 6, 32)
    keep = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    mask = keep[:, None, None, :]
    perturbed = x.clone()
    perturbed[0, 4:] = 100 * torch.randn(2, 32)
    torch.testing.assert_close(layer(x, mask)[keep], layer(perturbed, mask)[keep])
    # Without the mask, the perturbation does leak into the real positions: the test can fail.
    assert not torch.allclose(layer(x)[0, :4], layer(perturbed)[0, :4])


def test_decoder_layer_is_causal_and_ignores_padded_memory():
    torch.manual_seed(0)
    layer = DecoderLayer(32, 4, 64).eval()
    y, memory = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    memory_keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    memory_mask = memory_keep[:, None, None, :]
    out = layer(y, memory, causal, memory_mask)
    future = y.clone()
    future[:, 4:] = 100 * torch.randn(2, 2, 32)  # change positions 4 and 5
    torch.testing.assert_close(layer(future, memory, causal, memory_mask)[:, :4], out[:, :4])
    assert not torch.allclose(layer(future, memory, None, memory_mask)[:, :4], out[:, :4])
    padded = memory.clone()
    padded[0, 3:] = 100 * torch.randn(2, 32)
    torch.testing.assert_close(layer(y, padded, causal, memory_mask), out)


def test_model_output_does_not_depend_on_padding_or_future_tokens():
    model = small_model()
    src = random_ids(1, 5, 23, 3)
    tgt = torch.cat([torch.tensor([[BOS]]), random_ids(1, 6, 19, 4)], dim=1)
    reference = model(src, tgt)
    # Extra source padding (as when batched with a longer sentence) changes nothing.
    padded_src = torch.cat([src, torch.full((1, 4), PAD)], dim=1)
    torch.testing.assert_close(model(padded_src, tgt), reference)
    # Changing future target tokens leaves the logits of earlier positions unchanged.
    changed = tgt.clone()
    changed[0, 4:] = torch.tensor([7, 8, 9])
    torch.testing.assert_close(model(src, changed)[:, :4], reference[:, :4])
    assert not torch.allclose(model(src, changed)[:, 4:], reference[:, 4:])
    # Batched with a longer, different sentence: the same logits.
    other_src, other_tgt = random_ids(1, 9, 23, 5), random_ids(1, 7, 19, 6)
    batch_src = torch.cat([padded_src, other_src], dim=0)
    batch_tgt = torch.cat([tgt, other_tgt], dim=0)
    torch.testing.assert_close(model(batch_src, batch_tgt)[:1], reference)


# ------------------------------------------------------------------------------ agreement with torch


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_layer_equals_torch_transformer_encoder_layer(norm_first):
    torch.manual_seed(0)
    theirs = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True, norm_first=norm_first).eval()
    ours = EncoderLayer(32, 4, 64, dropout=0.1, norm_first=norm_first).eval()
    copy_weights_from_torch_encoder_layer(ours, theirs)
    x = torch.randn(3, 7, 32)
    keep = torch.arange(7)[None, :] < torch.tensor([[7], [5], [2]])
    # PyTorch's key padding mask means True = ignore; ours means True = may attend.
    expected = theirs(x, src_key_padding_mask=~keep)
    torch.testing.assert_close(ours(x, keep[:, None, None, :])[keep], expected[keep])
    torch.testing.assert_close(ours(x), theirs(x))


def test_copy_weights_rejects_mismatches():
    theirs = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, norm_first=True)
    with pytest.raises(ValueError, match="norm placement"):
        copy_weights_from_torch_encoder_layer(EncoderLayer(32, 4, 64, norm_first=False), theirs)
    with pytest.raises(ValueError, match="sizes differ"):
        copy_weights_from_torch_encoder_layer(EncoderLayer(32, 8, 64), theirs)
    with pytest.raises(ValueError, match="d_ff differs"):
        copy_weights_from_torch_encoder_layer(EncoderLayer(32, 4, 128), theirs)
    with pytest.raises(TypeError, match="TransformerEncoderLayer"):
        copy_weights_from_torch_encoder_layer(EncoderLayer(32, 4, 64), nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------ decoding


class TableModel(nn.Module):
    """A toy 'model' whose next-token distribution is a fixed table indexed by the generated prefix.

    Vocabulary: 0 = <pad>, 1 = <bos>, 2 = <eos>, 3.. = words. ``tables[s]`` serves source sentence
    ``s`` (its first token picks the table), so a batch can mix sentences with different answers.
    """

    def __init__(self, tables: list[dict[tuple[int, ...], list[float]]], vocab: int) -> None:
        super().__init__()
        self.tables, self.vocab = tables, vocab

    def make_src_mask(self, src):
        return (src != PAD)[:, None, None, :]

    def encode(self, src, src_mask=None):
        return src[:, :1].float()[:, :, None]  # memory: remembers which table to use

    def decode(self, tgt, memory, src_mask):
        logits = torch.full((tgt.shape[0], tgt.shape[1], self.vocab), -math.inf)
        for row in range(tgt.shape[0]):
            table = self.tables[int(memory[row, 0, 0])]
            # Dead beams (score -inf) carry filler prefixes the table lacks: any distribution will do.
            probs = torch.tensor(table.get(tuple(tgt[row, 1:].tolist()), [1.0] * self.vocab))
            logits[row, -1] = probs.log()  # impossible tokens get -inf
        return logits


def test_beam_search_finds_the_sequence_greedy_misses():
    # p(A)=.5, p(B)=.4 first; after A the mass is spread (best A A <eos> = .5*.4*.9 = .18), after B
    # <eos> is almost certain (B <eos> = .4*.9 = .36): greedy commits to A, a beam of 2 keeps B.
    A, B = 3, 4
    table = {
        (): [0, 0, 0.1, 0.5, 0.4],
        (A,): [0, 0, 0.3, 0.4, 0.3],
        (B,): [0, 0, 0.9, 0.05, 0.05],
    }
    for prefix in itertools.product([A, B], repeat=2):
        table[prefix] = [0, 0, 0.9, 0.05, 0.05]
    for prefix in itertools.product([A, B], repeat=3):
        table[prefix] = [0, 0, 1.0, 0, 0]
    model = TableModel([table], vocab=5)
    src = torch.tensor([[0]])
    assert greedy_decode(model, src, bos_id=BOS, eos_id=EOS, max_len=4) == [[A, A]]
    best, scores = beam_search(model, src, bos_id=BOS, eos_id=EOS, beam_size=2, max_len=4, length_penalty=0.0,
                               return_scores=True)
    assert best == [[B]]
    assert scores[0] == pytest.approx(math.log(0.4 * 0.9), abs=1e-5)


def random_table(seed: int, words: list[int], vocab: int, max_len: int) -> dict[tuple[int, ...], list[float]]:
    g = torch.Generator().manual_seed(seed)
    table = {}
    for n in range(max_len):
        for prefix in itertools.product(words, repeat=n):
            probs = torch.zeros(vocab)
            probs[[EOS, *words]] = torch.softmax(2 * torch.randn(len(words) + 1, generator=g), dim=0)
            table[prefix] = probs.tolist()
    return table


def brute_force_best(table, words, max_len, length_penalty):
    """Score every finished sequence: ends in <eos> (length ≤ max_len) or is cut at max_len tokens."""
    best, best_score = None, -math.inf
    for n in range(max_len + 1):
        for prefix in itertools.product(words, repeat=n):
            logp = sum(math.log(table[prefix[:i]][t]) for i, t in enumerate(prefix))
            endings = [(prefix, logp + math.log(table[prefix][EOS]), n + 1)] if n < max_len else []
            if n == max_len:
                endings.append((prefix, logp, n))
            for seq, score, length in endings:
                if score / length**length_penalty > best_score:
                    best, best_score = list(seq), score / length**length_penalty
    return best, best_score


@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 1.0])
def test_wide_beam_search_equals_exhaustive_search(length_penalty):
    words, vocab, max_len = [3, 4, 5], 6, 4
    tables = [random_table(seed, words, vocab, max_len) for seed in range(3)]
    model = TableModel(tables, vocab)
    src = torch.tensor([[0, 7], [1, 7], [2, PAD]])  # three sentences, three different tables
    found, scores = beam_search(model, src, bos_id=BOS, eos_id=EOS, beam_size=200, max_len=max_len,
                                length_penalty=length_penalty, return_scores=True)
    for s, table in enumerate(tables):
        best, best_score = brute_force_best(table, words, max_len, length_penalty)
        assert found[s] == best
        assert scores[s] == pytest.approx(best_score, abs=1e-4)


def test_beam_search_on_a_real_model_is_batch_independent_and_beam1_is_greedy():
    model = small_model(seed=1)
    src = torch.cat([random_ids(1, 6, 23, 7), random_ids(1, 6, 23, 8)])
    src[0, 3:] = PAD
    batched = beam_search(model, src, bos_id=BOS, eos_id=EOS, beam_size=3, max_len=8)
    alone = [beam_search(model, src[i : i + 1, : 3 if i == 0 else 6], bos_id=BOS, eos_id=EOS, beam_size=3,
                         max_len=8)[0] for i in range(2)]
    assert batched == alone
    greedy = greedy_decode(model, src, bos_id=BOS, eos_id=EOS, max_len=8)
    assert beam_search(model, src, bos_id=BOS, eos_id=EOS, beam_size=1, max_len=8) == greedy
    assert all(len(seq) <= 8 and EOS not in seq for seq in greedy + batched)


def test_training_steps_reduce_the_loss_on_a_copy_task():
    torch.manual_seed(0)
    model = Seq2SeqTransformer(12, 12, d_model=32, num_heads=4, d_ff=64, dropout=0.0, share_embeddings=True)
    src = torch.randint(3, 12, (16, 5))
    tgt = torch.cat([torch.full((16, 1), BOS), src, torch.full((16, 1), EOS)], dim=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        logits = model(src, tgt[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 12), tgt[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


# ------------------------------------------------------------------------------------------ errors


def test_error_paths():
    with pytest.raises(ValueError, match="even"):
        sinusoidal_positional_encoding(10, 7)
    with pytest.raises(ValueError, match="length must be a positive int"):
        sinusoidal_positional_encoding(0, 8)
    with pytest.raises(ValueError, match="max_len"):
        PositionalEncoding(8, max_len=4)(torch.zeros(1, 5, 8))
    with pytest.raises(ValueError, match="divisible"):
        Seq2SeqTransformer(10, 10, d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="joint vocabulary"):
        Seq2SeqTransformer(10, 12, d_model=16, num_heads=2, share_embeddings=True)
    with pytest.raises(ValueError, match="pad_id"):
        Seq2SeqTransformer(10, 10, d_model=16, num_heads=2, pad_id=10)
    with pytest.raises(ValueError, match="dropout"):
        EncoderLayer(16, 2, 32, dropout=1.5)
    with pytest.raises(ValueError, match="d_model=32"):
        EncoderLayer(32, 4, 64)(torch.zeros(2, 3, 16))
    with pytest.raises(ValueError, match="batch size"):
        DecoderLayer(32, 4, 64)(torch.zeros(2, 3, 32), torch.zeros(3, 3, 32))
    model = small_model()
    src = random_ids(2, 4, 23, 0)
    with pytest.raises(ValueError, match=r"outside \[0, 23\)"):
        model(src + 30, src)
    with pytest.raises(TypeError, match="integer token ids"):
        model(src.float(), src)
    with pytest.raises(ValueError, match=r"\(batch, length\)"):
        model(src[0], src)
    with pytest.raises(ValueError, match="same batch size"):
        model(src, src[:1] % 19)
    with pytest.raises(ValueError, match="exceeds max_len=40"):
        model(random_ids(1, 41, 23, 0), src[:1] % 19)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, src, bos_id=BOS, eos_id=EOS, beam_size=0)
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(model, src, bos_id=BOS, eos_id=EOS, length_penalty=-1.0)
    with pytest.raises(ValueError, match="max_len"):
        greedy_decode(model, src, bos_id=BOS, eos_id=EOS, max_len=0)
    with pytest.raises(ValueError, match="non-empty"):
        greedy_decode(model, src[:, :0], bos_id=BOS, eos_id=EOS)


# ------------------------------------------------------------------ hostile input (issue 22)


class ConstantLogitsModel(nn.Module):
    """A toy decoder whose next-token logits are always ``row``; counts its decode calls."""

    def __init__(self, row: list[float], max_len: int | None = None) -> None:
        super().__init__()
        self.row, self.decode_calls = torch.tensor(row), 0
        if max_len is not None:
            self.max_len = max_len

    def make_src_mask(self, src):
        return (src != PAD)[:, None, None, :]

    def encode(self, src, src_mask=None):
        return torch.zeros(src.shape[0], src.shape[1], 4)

    def decode(self, tgt, memory, src_mask):
        self.decode_calls += 1
        return self.row.expand(tgt.shape[0], tgt.shape[1], len(self.row)).clone()


@pytest.mark.parametrize("bad", [math.nan, math.inf, "all -inf"])
def test_decoders_refuse_non_finite_logits(bad):
    # All-NaN logits used to decode as token 0 (argmax of NaN), silently.
    row = [-math.inf] * 5 if bad == "all -inf" else [bad] + [0.0] * 4
    model = ConstantLogitsModel(row)
    src = torch.tensor([[3, 4]])
    for decode in (greedy_decode, beam_search):
        with pytest.raises(ValueError, match="logits at decoding step 1 contain NaN or \\+inf"):
            decode(model, src, bos_id=BOS, eos_id=EOS, max_len=5)
    # -inf for some tokens is how a model rules them out: still fine.
    model = ConstantLogitsModel([-math.inf, -math.inf, 0.0, -1.0, -math.inf])
    assert greedy_decode(model, src, bos_id=BOS, eos_id=EOS, max_len=5) == [[]]
    assert beam_search(model, src, bos_id=BOS, eos_id=EOS, max_len=5) == [[]]


@pytest.mark.parametrize("decode", [greedy_decode, beam_search])
def test_decoders_check_max_len_against_the_model_before_decoding(decode):
    model = small_model()
    src = random_ids(2, 4, 23, 0)
    calls = []
    model.decode = lambda *args: calls.append(1)  # any decoding step would be recorded
    with pytest.raises(ValueError, match=r"max_len=41 is longer than the model's max_len=40.*max_len <= 40"):
        decode(model, src, bos_id=BOS, eos_id=EOS, max_len=41)
    assert calls == []
    with pytest.raises(ValueError, match=r"eos_id=19 is outside the target vocabulary \[0, 19\)"):
        decode(model, src, bos_id=BOS, eos_id=19)
    with pytest.raises(ValueError, match="bos_id must be a non-negative int, got True"):
        decode(model, src, bos_id=True, eos_id=EOS)
    assert calls == []


def test_decoders_default_max_len_stays_within_the_model():
    # The default max_len (64) is capped at the model's own max_len, which used to fail at step 41.
    model = ConstantLogitsModel([0.0, 0.0, 0.0, 1.0, 0.0], max_len=40)  # never <eos>: runs to max_len
    src = torch.tensor([[3, 4]])
    assert greedy_decode(model, src, bos_id=BOS, eos_id=EOS) == [[3] * 40]
    assert beam_search(model, src, bos_id=BOS, eos_id=EOS, beam_size=1) == [[3] * 40]
    assert greedy_decode(ConstantLogitsModel([0.0, 0.0, 0.0, 1.0, 0.0]), src, bos_id=BOS, eos_id=EOS) == [[3] * 64]


def test_boolean_flags_refuse_strings():
    with pytest.raises(TypeError, match="norm_first must be True or False, got 'false'"):
        EncoderLayer(16, 2, 32, norm_first="false")
    with pytest.raises(TypeError, match="norm_first must be True or False"):
        DecoderLayer(16, 2, 32, norm_first="False")
    with pytest.raises(TypeError, match="share_embeddings must be True or False"):
        Seq2SeqTransformer(10, 10, d_model=16, num_heads=2, share_embeddings="no")
    model = small_model()
    with pytest.raises(TypeError, match="return_scores must be True or False, got 'false'"):
        beam_search(model, random_ids(1, 4, 23, 0), bos_id=BOS, eos_id=EOS, return_scores="false")


# ------------------------------------------------------------------- the translator and its checkpoint


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=["<pad>", "<unk>", "<bos>", "<eos>"], show_progress=False)
    tokenizer.train_from_iterator(["I am here.", "Je suis ici.", "Tom is tall.", "Tom est grand."] * 5, trainer)
    return tokenizer


def tiny_translator(tokenizer, seed: int = 0) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    vocab = tokenizer.get_vocab_size()
    return Seq2SeqTransformer(vocab, vocab, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                              d_ff=32, max_len=24, share_embeddings=True).eval()


class FixedOutputModel(nn.Module):
    """Always predicts the French tokens of one sentence, then <eos>, whatever the source."""

    def __init__(self, tokenizer, sentence: str):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.ids = tokenizer.encode(sentence).ids + [tokenizer.token_to_id("<eos>")]
        self.tgt_vocab_size, self.max_len, self.pad_id = tokenizer.get_vocab_size(), 24, 0

    def make_src_mask(self, src):
        return (src != 0)[:, None, None, :]

    def encode(self, src, src_mask=None):
        return torch.zeros(src.shape[0], src.shape[1], 4)

    def decode(self, tgt, memory, src_mask):
        logits = torch.full((tgt.shape[0], tgt.shape[1], self.tgt_vocab_size), -5.0)
        for t in range(tgt.shape[1]):
            logits[:, t, self.ids[min(t, len(self.ids) - 1)]] = 5.0
        return logits


@pytest.mark.parametrize("beam_size", [1, 3])
def test_translate_decodes_the_models_tokens_into_text(beam_size):
    tokenizer = tiny_tokenizer()
    model = FixedOutputModel(tokenizer, "Je suis ici.")
    assert translate(model, tokenizer, ["I am here.", "Tom is tall."], beam_size=beam_size) == ["Je suis ici."] * 2


def test_translate_normalises_its_input_like_the_training_data():
    tokenizer = tiny_tokenizer()
    model = tiny_translator(tokenizer)
    assert translate(model, tokenizer, ["I\u00a0am   here\u2019."]) == translate(model, tokenizer, ["I am here'."])


def test_translate_refuses_empty_sentences_and_non_lists():
    tokenizer = tiny_tokenizer()
    model = tiny_translator(tokenizer)
    with pytest.raises(ValueError, match=r"sentences \[1\] are empty"):
        translate(model, tokenizer, ["I am here.", " \u00a0 "])
    with pytest.raises(TypeError, match="list of str"):
        translate(model, tokenizer, "I am here.")


def test_normalise_tatoeba_unifies_invisible_spaces_and_apostrophes():
    assert normalise_tatoeba("Tu viens\u202f? C\u2019est\u00a0l\u00e0 !", french=True) == "Tu viens ? C'est là !"
    assert normalise_tatoeba("Where?") == "Where?"  # English keeps its punctuation unspaced
    assert normalise_tatoeba("Viens!", french=True) == "Viens !"


def test_translation_checkpoint_round_trip(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_translator(tokenizer)
    path = save_translation_checkpoint(tmp_path / "t.pt", model, tokenizer, scale="smoke", metadata={"n_test": 3})
    loaded, loaded_tokenizer, info = load_translation_checkpoint(path)
    assert info["scale"] == "smoke" and info["metadata"] == {"n_test": 3} and info["config"] == model.config
    assert not loaded.training
    src = torch.tensor([tokenizer.encode("Tom is tall.").ids])
    torch.testing.assert_close(loaded(src, src), model(src, src))
    assert loaded.output.weight is loaded.src_embed.weight  # tying survives the round trip
    assert loaded_tokenizer.to_str() == tokenizer.to_str()
    assert [p.name for p in tmp_path.iterdir()] == ["t.pt"]  # no temporary file left behind


def test_translation_checkpoint_errors_are_clear(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_translator(tokenizer)
    with pytest.raises(FileNotFoundError, match="run notebooks/03_transformer.ipynb"):
        load_translation_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read the translation checkpoint .*junk.pt.*run notebooks/03_transformer.ipynb"):
        load_translation_checkpoint(tmp_path / "junk.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a translation checkpoint"):
        load_translation_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="plain values"):
        save_translation_checkpoint(tmp_path / "m.pt", model, tokenizer, scale="cpu", metadata={"x": object()})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_translation_checkpoint(tmp_path / "no" / "m.pt", model, tokenizer, scale="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt", "other.pt"]


def test_a_failed_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch):
    import os

    tokenizer = tiny_tokenizer()
    path = save_translation_checkpoint(tmp_path / "t.pt", tiny_translator(tokenizer), tokenizer, scale="cpu")
    before = path.read_bytes()

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_translation_checkpoint(path, tiny_translator(tokenizer, seed=1), tokenizer, scale="cpu")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["t.pt"]


def test_cross_attention_weights_are_distributions_over_real_source_tokens():
    model = small_model()
    src = random_ids(2, 6, 23, seed=1)
    src[0, 4:] = PAD
    tgt = random_ids(2, 5, 19, seed=2)
    weights = cross_attention_weights(model, src, tgt)
    assert weights.shape == (2, 2, 4, 5, 6)  # (layers, batch, heads, T, S)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 4, 5))
    assert float(weights[:, 0, :, :, 4:].abs().max()) == 0.0


def test_tatoeba_test_set_groups_references_and_never_overlaps_training():
    from llmbook.data import load_dataset, tatoeba_english_key

    test = tatoeba_test_set()
    assert test.english.is_unique and all(len(r) >= 1 for r in test.references)
    assert any(len(r) > 1 for r in test.references)  # several French translations of one sentence
    train_keys = {tatoeba_english_key(t) for t in load_dataset("tatoeba_fra_eng_full", "train").english}
    assert not train_keys & {tatoeba_english_key(t) for t in test.english}
    assert list(tatoeba_test_set(5).english) == list(test.english[:5])


def test_token_budget_batches_respect_the_budget_and_cover_every_pair():
    g = torch.Generator().manual_seed(0)
    src = [[5] * int(n) for n in torch.randint(1, 20, (300,), generator=g)]
    tgt = [[6] * int(n) for n in torch.randint(1, 20, (300,), generator=g)]
    for generator in (None, torch.Generator().manual_seed(3)):
        batches = token_budget_batches(src, tgt, 120, generator=generator)
        assert sorted(i for b in batches for i in b) == list(range(300))
        for b in batches:
            width = max(max(len(src[i]), len(tgt[i]) + 2) for i in b)
            assert len(b) * width <= 120
    unshuffled = token_budget_batches(src, tgt, 120)
    lengths = [(len(src[i]), len(tgt[i])) for b in unshuffled for i in b]
    assert lengths == sorted(lengths)  # similar lengths share a batch
    assert token_budget_batches([[1] * 50], [[1] * 50], 10) == [[0]]  # too long for the budget: alone
    with pytest.raises(ValueError, match="same number"):
        token_budget_batches(src, tgt[:-1], 120)


def test_train_translation_model_runs_the_recipe_and_returns_a_usable_translator():
    cfg = dict(n_train=300, vocab=300, max_tokens=12, d_model=16, heads=2, layers=1, d_ff=32, dropout=0.1,
               batch_tokens=400, steps=3, warmup=1, lr=1e-3)
    model, tokenizer, info = train_translation_model(cfg, progress=False)
    assert info["steps"] == 3 and not model.training
    assert model.output.weight is model.src_embed.weight
    assert [tokenizer.id_to_token(i) for i in range(4)] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert len(translate(model, tokenizer, ["Tom is here."])) == 1
    with pytest.raises(ValueError, match="cfg lacks steps"):
        train_translation_model({k: v for k, v in cfg.items() if k != "steps"})


def test_decode_last_equals_the_last_position_of_decode():
    model = small_model()
    src, tgt = random_ids(3, 6, 23, seed=4), random_ids(3, 5, 19, seed=5)
    src_mask = model.make_src_mask(src)
    memory = model.encode(src, src_mask)
    torch.testing.assert_close(model.decode_last(tgt, memory, src_mask), model.decode(tgt, memory, src_mask)[:, -1])


def test_the_saved_config_names_every_constructor_argument():
    """save_translation_checkpoint rebuilds the model from model.config: an argument missing there would be
    silently reset to its default when the checkpoint is loaded."""
    arguments = set(inspect.signature(Seq2SeqTransformer.__init__).parameters) - {"self"}
    model = small_model()
    assert set(model.config) == arguments
    assert Seq2SeqTransformer(**model.config).config == model.config
