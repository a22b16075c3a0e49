"""Tests of llmbook.metrics against sacrebleu, rouge-score, sklearn and torch."""

import math
import random

import numpy as np
import pytest
import torch

from llmbook import metrics
from llmbook.metrics import (
    bleu,
    bleu_details,
    bleu_from_statistics,
    bleu_statistics,
    bootstrap_ci,
    calibration_bins,
    confusion_matrix,
    expected_calibration_error,
    lcs_length,
    paired_bootstrap,
    perplexity,
    precision_recall_f1,
    rouge,
    rouge_per_example,
    rouge_tokenize,
    token_nll,
    tokenize_13a,
)

sacrebleu = pytest.importorskip("sacrebleu")

# ----------------------------------------------------------------------------------------------- BLEU

TRICKY = [
    "Hello, world! It's 3.14 -- isn't it?",
    'a-b 1990-2000 &amp; &lt;x&gt; &quot;q&quot; "quoted"',
    "Bonjour\u202f! Ça va\u00a0? «\u202fOui\u202f»",
    "e.g. U.S.A., 1,000.5 and 2.5% of $3",
    "",
    "   ",
    "tab\there\nnew-\nline <skipped> end",
    "日本語のテキスト。句読点、あり",
    "trailing spaces   ",
    "(parens) [brackets] {braces} a/b a\\b ~tilde~ `tick` ^caret_",
]


def _streams(references):
    """Our layout (references[i] = refs of example i) -> sacrebleu's (streams[k][i])."""
    return [list(stream) for stream in zip(*references)]


def _sacre(hyps, references):
    return sacrebleu.corpus_bleu(hyps, _streams(references)).score


@pytest.mark.parametrize("text", TRICKY)
def test_tokenize_13a_matches_sacrebleu(text):
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    assert tokenize_13a(text) == Tokenizer13a()(text.rstrip()).split()


def _random_corpus(rng: random.Random, n: int, n_refs: int):
    words = "the a cat dog sat on mat . , ! is was big small red Ça café 3.5 1,000 - ( ) ' \"".split()

    def sentence(length):
        return " ".join(rng.choice(words) for _ in range(length))

    hyps = [sentence(rng.randint(0, 12)) for _ in range(n)]
    refs = [[sentence(rng.randint(1, 14)) for _ in range(n_refs)] for _ in range(n)]
    return hyps, refs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_refs", [1, 2, 4])
def test_bleu_matches_sacrebleu_on_random_corpora(seed, n_refs):
    hyps, refs = _random_corpus(random.Random(seed * 10 + n_refs), n=25, n_refs=n_refs)
    assert bleu(hyps, refs) == pytest.approx(_sacre(hyps, refs), abs=1e-9)


def test_bleu_matches_sacrebleu_on_real_sentences():
    hyps = [
        "The cat sat on the mat.",
        "It's raining cats and dogs!",
        "",
        "I don't know, 3.14 is pi.",
        "Il fait beau aujourd'hui\u202f!",
        "He left at 5 p.m. -- on time.",
    ]
    refs = [
        ["The cat is sitting on the mat.", "A cat sat on the mat."],
        ["It is raining heavily!", "It's pouring rain."],
        ["Nothing was said.", "Silence."],
        ["I don't know; 3.14 is pi.", "No idea, but pi is 3.14."],
        ["Il fait beau aujourd'hui !", "Quel beau temps\u00a0!"],
        ["He left at 5 p.m., on time.", "At 5 p.m. he left on time."],
    ]
    ours = bleu(hyps, refs)
    assert 0 < ours < 100
    assert ours == pytest.approx(_sacre(hyps, refs), abs=1e-9)
    # the single-reference score differs, and still agrees
    single = [r[:1] for r in refs]
    assert bleu(hyps, single) == pytest.approx(_sacre(hyps, single), abs=1e-9)
    assert bleu(hyps, single) != pytest.approx(ours)


def test_bleu_edge_cases_match_sacrebleu():
    cases = [
        (["", ""], [["a b c"], ["d"]]),  # all hypotheses empty: BP = 0
        (["a b c d e f"], [["a b c d e f"]]),  # perfect match
        (["a b"], [["a b"]]),  # no 3- or 4-grams at all: BLEU is 0 even with smoothing
        (["x y z w v"], [["a b c d e"]]),  # no match at all
        (["the the the the the the the"], [["the cat is on the mat"]]),  # clipping
        (["a b c d e f g"], [["a b c x e f g"]]),  # a zero 4-gram precision is smoothed
        (["a b c d"], [["a b c d e f g h i j"]]),  # brevity penalty
        (["a b c d e f g h i j k l"], [["a b c d"]]),  # longer than the reference: BP = 1
        (["a b c d e"], [["a b c", "a b c d e f g"]]),  # ties in closest length go to the shorter one
        (["Hello World !"], [["hello world !"]]),  # case-sensitive
    ]
    for hyps, refs in cases:
        assert bleu(hyps, refs) == pytest.approx(_sacre(hyps, refs), abs=1e-9), (hyps, refs)
    assert bleu(["a b c d e f"], [["a b c d e f"]]) == pytest.approx(100.0)
    assert bleu(["a b"], [["a b"]]) == 0.0


def test_duplicate_reference_changes_nothing():
    hyps, refs = _random_corpus(random.Random(7), n=20, n_refs=2)
    padded = [r + [r[0]] for r in refs]
    assert bleu(hyps, padded) == pytest.approx(bleu(hyps, refs), abs=1e-12)


def test_bleu_details_parts():
    result = bleu_details(["the the the the the the the"], [["the cat is on the mat"]])
    assert result.matches[0] == 2 and result.totals[0] == 7  # "the" clipped to 2
    assert result.hyp_len == 7 and result.ref_len == 6 and result.bp == 1.0
    short = bleu_details(["a b c d"], [["a b c d e f g h"]])
    assert short.bp == pytest.approx(math.exp(1 - 8 / 4))
    assert str(short).startswith("BLEU = ")
    # statistics add up: corpus BLEU is computed from summed rows, not by averaging sentence scores
    hyps, refs = _random_corpus(random.Random(3), n=10, n_refs=2)
    stats = bleu_statistics(hyps, refs)
    assert stats.shape == (10, 10)
    assert bleu_from_statistics(stats).score == pytest.approx(bleu(hyps, refs))
    assert bleu_from_statistics(stats.sum(axis=0)).score == pytest.approx(bleu(hyps, refs))


def test_bleu_options_match_sacrebleu():
    hyps, refs = _random_corpus(random.Random(11), n=30, n_refs=2)
    lower = bleu_details(hyps, refs, tokenizer=lambda s: tokenize_13a(s.lower())).score
    assert lower == pytest.approx(sacrebleu.corpus_bleu(hyps, _streams(refs), lowercase=True).score)
    none = bleu_details(hyps, refs, tokenizer=str.split).score
    assert none == pytest.approx(sacrebleu.corpus_bleu(hyps, _streams(refs), tokenize="none").score)
    unsmoothed = bleu_details(hyps, refs, smooth="none").score
    assert unsmoothed == pytest.approx(sacrebleu.corpus_bleu(hyps, _streams(refs), smooth_method="none").score)
    bigram = bleu_details(hyps, refs, max_order=2).score
    assert bigram == pytest.approx(sacrebleu.BLEU(max_ngram_order=2).corpus_score(hyps, _streams(refs)).score)


def test_text_metrics_accept_list_likes():
    import pandas as pd

    hyps, refs = _random_corpus(random.Random(9), n=8, n_refs=2)
    expected = bleu(hyps, refs)
    assert bleu(tuple(hyps), tuple(tuple(r) for r in refs)) == pytest.approx(expected)
    assert bleu(pd.Series(hyps), pd.Series(refs)) == pytest.approx(expected)
    assert bleu(np.array(hyps), np.array(refs)) == pytest.approx(expected)
    assert rouge(pd.Series(hyps), pd.Series(refs)) == pytest.approx(rouge(hyps, refs))
    with pytest.raises(TypeError, match="must be a list of strings, got dict"):
        bleu({"a": 1}, [["a"]])


def test_bleu_errors():
    with pytest.raises(TypeError, match="single string"):
        bleu("a b c", [["a b c"]])
    with pytest.raises(ValueError, match="empty"):
        bleu([], [])
    with pytest.raises(ValueError, match=r"2 predictions/hypotheses but 1 reference lists.*ref_layout='streams'"):
        bleu(["a", "b"], [["a", "b"]])
    with pytest.raises(TypeError, match=r"references\[0\] is a str"):
        bleu(["a"], ["a"])
    with pytest.raises(ValueError, match=r"references\[1\] is empty"):
        bleu(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match=r"same number of references.*references\[1\] has 2"):
        bleu(["a", "b"], [["a"], ["b", "c"]])
    with pytest.raises(TypeError, match=r"hypotheses\[1\] must be a str"):
        bleu(["a", None], [["a"], ["b"]])
    with pytest.raises(TypeError, match=r"references\[0\]\[0\] must be a str"):
        bleu(["a"], [[3]])
    with pytest.raises(ValueError, match="smooth"):
        bleu_details(["a"], [["a"]], smooth="add-k")
    with pytest.raises(ValueError, match="shape"):
        bleu_from_statistics(np.zeros((3, 5)))


# --------------------------------------------------------------------- BLEU: layout of the references


@pytest.mark.parametrize("n_refs", [1, 2, 4])
def test_bleu_reads_sacrebleus_stream_layout(n_refs):
    hyps, refs = _random_corpus(random.Random(40 + n_refs), n=12, n_refs=n_refs)
    streams = _streams(refs)
    expected = sacrebleu.corpus_bleu(hyps, streams).score
    assert bleu(hyps, streams, ref_layout="streams") == pytest.approx(expected, abs=1e-9)
    assert bleu(hyps, refs, ref_layout="per_hypothesis") == pytest.approx(expected, abs=1e-9)
    assert bleu_details(hyps, streams, ref_layout="streams").score == pytest.approx(expected, abs=1e-9)
    np.testing.assert_array_equal(bleu_statistics(hyps, streams, ref_layout="streams"), bleu_statistics(hyps, refs))


def test_bleu_refuses_a_square_table_without_ref_layout():
    # 3 hypotheses with 3 references each: the table reads differently in the two layouts
    hyps = ["the cat sat on the mat", "a dog ran in the park", "it is raining today"]
    table = [
        ["the cat sat on a mat", "a cat is on the mat", "the cat sat on the mat"],
        ["a dog ran in a park", "the dog runs in the park", "it rains today"],
        ["it is raining now", "rain falls today", "a dog ran in the park"],
    ]
    as_ours = sacrebleu.corpus_bleu(hyps, _streams(table)).score  # table[i] = references of hypothesis i
    as_streams = sacrebleu.corpus_bleu(hyps, table).score  # table[k] = k-th reference of every hypothesis
    assert as_ours != pytest.approx(as_streams)  # so reading it the wrong way silently gives a wrong score
    with pytest.raises(ValueError, match=r"square 3 x 3 table.*ref_layout='per_hypothesis'.*ref_layout='streams'"):
        bleu(hyps, table)
    with pytest.raises(ValueError, match="ref_layout"):
        bleu_statistics(hyps, table)
    assert bleu(hyps, table, ref_layout="per_hypothesis") == pytest.approx(as_ours, abs=1e-9)
    assert bleu(hyps, table, ref_layout="streams") == pytest.approx(as_streams, abs=1e-9)


def test_bleu_accepts_square_tables_that_read_the_same_both_ways():
    # one hypothesis with one reference: both layouts are [[ref]]
    assert bleu(["a b c d e"], [["a b c d e"]]) == pytest.approx(100.0)
    # a symmetric table (refs[i][k] == refs[k][i]) is the same in both layouts
    hyps = ["a b c d", "e f g h"]
    symmetric = [["a b c d", "x y z w"], ["x y z w", "e f g h"]]
    assert bleu(hyps, symmetric) == pytest.approx(sacrebleu.corpus_bleu(hyps, symmetric).score, abs=1e-9)


def test_bleu_ref_layout_errors():
    with pytest.raises(ValueError, match="ref_layout must be 'per_hypothesis', 'streams' or None"):
        bleu(["a"], [["a"]], ref_layout="sacrebleu")
    with pytest.raises(ValueError, match=r"references\[1\] has 2 references but there are 3 hypotheses"):
        bleu(["a", "b", "c"], [["a", "b", "c"], ["a", "b"]], ref_layout="streams")
    with pytest.raises(TypeError, match=r"references\[0\] must be a list of strings"):
        bleu(["a"], ["a"], ref_layout="streams")
    with pytest.raises(TypeError, match=r"references\[0\]\[1\] must be a str"):
        bleu(["a", "b"], [["a", None]], ref_layout="streams")
    with pytest.raises(ValueError, match="at least one reference stream"):
        bleu(["a"], [], ref_layout="streams")


# ------------------------------------------------------------- BLEU: Chinese and sacrebleu's tokenizers

CHINESE = [
    "我爱北京天安门。",
    "今天天气很好，我们去公园散步吧！",
    "他说：“这本书很有意思。”",
    "GPT-4 是一个大型语言模型，它在 2023 年发布。",
    "价格是 3.14 元，约合 0.5 美元……",
    "我们使用 PyTorch 训练了 Transformer 模型（12 层）。",
    "北京—上海的高铁只要4.5小时",
    "  前后有空格  ",
    "中文、English 和 123 混在一起：a-b, c.d；e/f",
    "１２３ＡＢＣ全角字符，「引号」『双引号』",
    "日本語のテキスト。カタカナとひらがな",
    "한국어 문장도 있습니다.",
    "𠀀𠀁 扩展B区的字",  # CJK Extension B: sacrebleu's zh tokenizer does not split these
    "",
]


@pytest.mark.parametrize("text", TRICKY + CHINESE)
def test_bleu_tokenizers_match_sacrebleus(text):
    from sacrebleu.tokenizers.tokenizer_char import TokenizerChar
    from sacrebleu.tokenizers.tokenizer_none import NoneTokenizer
    from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

    # sacrebleu strips trailing whitespace before tokenising, and splits the result on whitespace
    assert metrics.tokenize_zh(text) == TokenizerZh()(text.rstrip()).split()
    assert metrics.tokenize_char(text) == TokenizerChar()(text.rstrip()).split()
    assert metrics.BLEU_TOKENIZERS["none"](text) == NoneTokenizer()(text.rstrip()).split()
    assert metrics.BLEU_TOKENIZERS["13a"] is tokenize_13a


def test_tokenize_zh_splits_the_characters_sacrebleu_splits():
    # every code point of the first three planes, and a sample of the rest, in runs of 500
    from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

    code_points = [*range(0x30000), *range(0x30000, 0x110000, 101)]
    for start in range(0, len(code_points), 500):
        text = "".join(chr(c) for c in code_points[start : start + 500])
        assert metrics.tokenize_zh(text) == TokenizerZh()(text.rstrip()).split(), hex(code_points[start])


def _random_chinese_corpus(rng: random.Random, n: int, n_refs: int):
    words = (
        "我 你 他 们 的 是 在 有 一个 模型 语言 训练 数据 北京 上海 今天 天气 很 好 中文 翻译 句子 "
        "。 ， ！ ？ 、 ： ； “ ” （ ） …… — GPT BERT the model is 3.14 2023 1,000 - . , ( )"
    ).split()

    def sentence(length):
        # Chinese is written without spaces; English words and numbers keep theirs sometimes
        return "".join(rng.choice(words) + (" " if rng.random() < 0.2 else "") for _ in range(length))

    hyps = [sentence(rng.randint(0, 15)) for _ in range(n)]
    refs = [[sentence(rng.randint(1, 18)) for _ in range(n_refs)] for _ in range(n)]
    return hyps, refs


@pytest.mark.parametrize("tokenize", ["zh", "char", "13a", "none"])
def test_bleu_tokenize_matches_sacrebleu_on_chinese_corpora(tokenize):
    corpora = [_random_chinese_corpus(random.Random(seed), n=20, n_refs=1 + seed % 3) for seed in range(5)]
    hyps = ["我爱北京天安门。", "今天天气很好，我们去公园散步吧！", "GPT-4 是一个大型语言模型，它在 2023 年发布。"]
    refs = [
        ["我爱北京的天安门。", "我喜欢北京天安门！"],
        ["今天天气不错，我们去公园散步吧。", "天气很好，去公园走走吧！"],
        ["GPT-4 是大型语言模型，发布于 2023 年。", "GPT-4 这个大语言模型是 2023 年发布的。"],
    ]
    for hyps, refs in [*corpora, (hyps, refs), (CHINESE, [[text] for text in reversed(CHINESE)])]:
        expected = sacrebleu.corpus_bleu(hyps, _streams(refs), tokenize=tokenize).score
        assert bleu(hyps, refs, tokenize=tokenize) == pytest.approx(expected, abs=1e-9)
        stats = bleu_statistics(hyps, refs, tokenize=tokenize)
        assert bleu_from_statistics(stats).score == pytest.approx(expected, abs=1e-9)


def test_bleu_needs_zh_for_chinese():
    hyps, refs = ["我爱北京天安门。"], [["我爱北京的天安门。"]]
    assert bleu(hyps, refs) == 0.0  # with 13a each sentence is a single "word": nothing matches
    assert bleu(hyps, refs, tokenize="zh") > 40
    assert bleu_details(hyps, refs, tokenize="zh").hyp_len == 8  # 7 characters and the full stop


def test_bleu_tokenize_errors():
    with pytest.raises(ValueError, match="tokenize must be one of '13a', 'zh', 'char', 'none'.*tokenizer="):
        bleu(["a"], [["a"]], tokenize="intl")
    with pytest.raises(ValueError, match="not both"):
        bleu_details(["a"], [["a"]], tokenize="zh", tokenizer=str.split)
    with pytest.raises(TypeError, match="tokenizer must be a function"):
        bleu_details(["a"], [["a"]], tokenizer="13a")


# ---------------------------------------------------------------------------------------------- ROUGE

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
from rouge_score.tokenize import tokenize as google_tokenize  # noqa: E402


def _google_rouge(predictions, references):
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    per = [scorer.score_multi(refs, pred) for pred, refs in zip(predictions, references)]
    return {key: float(np.mean([p[key].fmeasure for p in per])) for key in ("rouge1", "rouge2", "rougeL")}


@pytest.mark.parametrize("text", TRICKY + ["Don't STOP—it's 42ºC; naïve café, Œuvre İstanbul ǅ"])
def test_rouge_tokenize_matches_rouge_score(text):
    assert rouge_tokenize(text) == google_tokenize(text, None)


def test_lcs_length():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], ["a"]) == 0
    assert lcs_length(["a", "b", "c"], ["a", "b", "c"]) == 3
    assert lcs_length(["a", "b", "c"], ["c", "b", "a"]) == 1


def test_rouge_matches_rouge_score():
    rng = random.Random(0)
    words = "we propose a new method for training deep neural networks that improves accuracy , the model".split()

    def sentence():
        return " ".join(rng.choice(words) for _ in range(rng.randint(0, 15)))

    predictions = [sentence() for _ in range(40)] + [
        "", "!!!", "We propose a NEW method.", "naïve café über-fast", "the the the the",
    ]
    references = [[sentence() for _ in range(rng.randint(1, 4))] for _ in range(40)] + [
        ["something"], ["a b c", "!!!"], ["we propose a new method", "a method is proposed"],
        ["naive cafe uber fast"], ["the cat", "the the"],
    ]
    ours = rouge(predictions, references)
    theirs = _google_rouge(predictions, references)
    assert set(ours) == {"rouge1", "rouge2", "rougeL"}
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6)
    # single references too
    single = [r[:1] for r in references]
    for key, value in rouge(predictions, single).items():
        assert value == pytest.approx(_google_rouge(predictions, single)[key], abs=1e-6)


def test_rouge_per_example_and_best_reference():
    per = rouge_per_example(["the cat sat"], [["a dog ran", "the cat sat"]])
    assert per["rouge1"][0] == pytest.approx(1.0) and per["rougeL"][0] == pytest.approx(1.0)
    # each ROUGE type picks its own best reference
    per = rouge_per_example(["a b c d"], [["d c b a", "a b x x x x x x"]])
    assert per["rouge1"][0] == pytest.approx(1.0)
    assert per["rougeL"][0] == pytest.approx(_google_rouge(["a b c d"], [["d c b a", "a b x x x x x x"]])["rougeL"])


def test_rouge_errors():
    with pytest.raises(TypeError, match="single string"):
        rouge("a summary", [["a summary"]])
    with pytest.raises(ValueError, match="empty"):
        rouge([], [])
    with pytest.raises(ValueError, match="2 predictions/hypotheses but 1 reference lists"):
        rouge(["a", "b"], [["a"]])
    with pytest.raises(TypeError, match=r"references\[0\] is a str"):
        rouge(["a"], ["a"])
    with pytest.raises(ValueError, match=r"references\[0\] is empty"):
        rouge(["a"], [[]])
    with pytest.raises(ValueError, match="n must be at least 1"):
        metrics.rouge_n_scores(["a"], ["a"], 0)


class _CjkTokenizer:
    """rouge-score accepts any object with a ``tokenize(text)`` method (RougeScorer(tokenizer=...))."""

    def tokenize(self, text):
        return metrics.rouge_tokenize_cjk(text)


def test_rouge_default_tokenizer_drops_chinese_and_cjk_scores_it():
    predictions, references = ["我爱北京"], [["我爱上海"]]
    # rouge-score's default tokenizer keeps only a-z0-9: both texts become empty and score 0
    assert google_tokenize("我爱北京", None) == []
    assert _google_rouge(predictions, references) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    with pytest.warns(UserWarning, match="tokenize='cjk'"):
        assert rouge(predictions, references) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    # per character: 我 爱 match (2 of 4 unigrams), 我爱 is the one common bigram of 3, the LCS is 我爱
    assert metrics.rouge_tokenize_cjk("我爱北京") == ["我", "爱", "北", "京"]
    assert rouge(predictions, references, tokenize="cjk") == pytest.approx(
        {"rouge1": 0.5, "rouge2": 1 / 3, "rougeL": 0.5}
    )
    per = rouge_per_example(predictions, references, tokenize="cjk")
    assert per["rouge2"][0] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "text", [t for t in TRICKY if "日本語" not in t] + ["Don't STOP—it's 42ºC; naïve café, Œuvre İstanbul ǅ"]
)
def test_rouge_tokenize_cjk_equals_the_default_on_text_without_cjk(text):
    assert metrics.rouge_tokenize_cjk(text) == google_tokenize(text, None)


def test_rouge_tokenize_cjk_keeps_words_and_cjk_characters():
    assert metrics.rouge_tokenize_cjk("用PyTorch训练GPT-2模型，共12层。") == [
        "用", "pytorch", "训", "练", "gpt", "2", "模", "型", "共", "12", "层",
    ]
    assert metrics.rouge_tokenize_cjk("ひらがなとカタカナ") == list("ひらがなとカタカナ")
    assert metrics.rouge_tokenize_cjk("한국어 문장") == ["한", "국", "어", "문", "장"]
    assert metrics.rouge_tokenize_cjk("𠀀字") == ["𠀀", "字"]  # CJK Extension B


def test_rouge_cjk_matches_rouge_score_given_the_same_tokenizer():
    rng = random.Random(1)
    pieces = "我 你 模型 语言 训练 数据 北京 今天 天气 很 好 的 是 。 ， ！ GPT BERT the model 2023 3.14".split()

    def sentence():
        return "".join(rng.choice(pieces) + (" " if rng.random() < 0.2 else "") for _ in range(rng.randint(0, 14)))

    predictions = [sentence() for _ in range(30)] + ["", "。。", "今天天气很好"]
    references = [[sentence() for _ in range(rng.randint(1, 3))] for _ in range(30)]
    references += [["一些文字"], ["你好"], ["今天的天气很好", "天气不错"]]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_CjkTokenizer())
    per = [scorer.score_multi(refs, pred) for pred, refs in zip(predictions, references)]
    theirs = {key: float(np.mean([p[key].fmeasure for p in per])) for key in ("rouge1", "rouge2", "rougeL")}
    ours = rouge(predictions, references, tokenize="cjk")
    assert ours["rouge1"] > 0.1
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9)


def test_rouge_tokenize_errors():
    with pytest.raises(ValueError, match="tokenize must be 'default'.*or 'cjk'"):
        rouge(["a"], [["a"]], tokenize="jieba")
    with pytest.raises(ValueError, match="tokenize must be"):
        rouge_per_example(["a"], [["a"]], tokenize=None)


# ----------------------------------------------------------------------------------------- perplexity


def test_token_nll_and_perplexity_match_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    targets = torch.randint(0, 11, (3, 7))
    targets[0, 5:] = -100  # padding
    nll = token_nll(logits, targets)
    assert nll.shape == (19,)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(nll.mean(), loss)
    assert perplexity(nll) == pytest.approx(math.exp(loss.item()), rel=1e-6)
    # a uniform model over V tokens has perplexity V
    assert perplexity(token_nll(torch.zeros(50, 13), torch.randint(0, 13, (50,)))) == pytest.approx(13.0, rel=1e-6)
    # per-character: the same total NLL over more units
    assert perplexity([1.0, 2.0], num_units=6) == pytest.approx(math.exp(0.5))
    assert metrics.bits_per_character([math.log(2)] * 4, 4) == pytest.approx(1.0)


def test_perplexity_errors():
    with pytest.raises(ValueError, match="empty"):
        perplexity([])
    with pytest.raises(ValueError, match="non-negative"):
        perplexity([1.0, -0.5])
    with pytest.raises(ValueError, match="num_units"):
        perplexity([1.0], num_units=0)
    with pytest.raises(ValueError, match="leading shape"):
        token_nll(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        token_nll(torch.randn(2, 5), torch.zeros(2))
    with pytest.raises(ValueError, match=r"lie in \[0, 5\)"):
        token_nll(torch.randn(2, 5), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="every target is ignore_index"):
        token_nll(torch.randn(2, 5), torch.tensor([-100, -100]))


def test_perplexity_of_a_huge_mean_nll_is_infinite_not_an_error():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no OverflowError, and no overflow warning either
        assert perplexity([1000.0]) == math.inf  # exp(1000) is beyond the largest float
        assert perplexity([800.0, 900.0], num_units=2) == math.inf
        assert perplexity([1e308, 1e308]) == math.inf  # even the sum overflows
        # bits per character stays finite: it is the mean NLL in bits, log2 of the perplexity
        assert metrics.bits_per_character([1000.0, 1000.0], 2) == pytest.approx(1000.0 / math.log(2))
    assert perplexity([709.0]) == pytest.approx(math.exp(709.0))  # the largest mean that still fits


# -------------------------------------------------------------------------------- classification


@pytest.mark.parametrize("seed", range(3))
def test_precision_recall_f1_match_sklearn(seed):
    from sklearn import metrics as skm

    rng = np.random.default_rng(seed)
    n_classes = 6
    y_true = rng.choice(n_classes, size=300, p=[0.5, 0.2, 0.15, 0.1, 0.05, 0.0])  # class 5 never occurs
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, n_classes - 2, size=300))
    labels = list(range(n_classes))
    np.testing.assert_array_equal(
        confusion_matrix(y_true, y_pred, num_classes=n_classes), skm.confusion_matrix(y_true, y_pred, labels=labels)
    )
    for average in ("macro", "micro", "weighted", None):
        ours = precision_recall_f1(y_true, y_pred, average=average, num_classes=n_classes)
        theirs = skm.precision_recall_fscore_support(
            y_true, y_pred, average=average, labels=labels, zero_division=0
        )[:3]
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, atol=1e-12)
    assert precision_recall_f1(y_true, y_pred, average="micro")[2] == pytest.approx(skm.accuracy_score(y_true, y_pred))

def _assert_matches_sklearn(y_true, y_pred, **options):
    """Every average of precision_recall_f1, and the confusion matrix, equal sklearn's with the same classes."""
    import warnings

    from sklearn import metrics as skm

    sk_options = {}
    if "labels" in options:
        sk_options["labels"] = options["labels"]
    elif "num_classes" in options:
        sk_options["labels"] = list(range(options["num_classes"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's UndefinedMetricWarning for the classes that never occur
        for average in ("macro", "micro", "weighted", None):
            ours = precision_recall_f1(y_true, y_pred, average=average, **options)
            theirs = skm.precision_recall_fscore_support(
                y_true, y_pred, average=average, zero_division=0, **sk_options
            )[:3]
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a, b, atol=1e-12, err_msg=f"average={average}, {options}")
            # sklearn's default zero_division ("warn") gives the same numbers
            warned = skm.precision_recall_fscore_support(y_true, y_pred, average=average, **sk_options)[:3]
            for a, b in zip(ours, warned):
                np.testing.assert_allclose(a, b, atol=1e-12)
    np.testing.assert_array_equal(
        confusion_matrix(y_true, y_pred, **options), skm.confusion_matrix(y_true, y_pred, **sk_options)
    )


def test_precision_recall_f1_score_only_the_classes_present():
    # class 0 occurs in neither input: it is not a class of this data (the two examples)
    _assert_matches_sklearn([1, 2, 1, 2, 3, 3], [1, 2, 2, 2, 3, 1])
    assert precision_recall_f1([1, 2, 1, 2, 3, 3], [1, 2, 2, 2, 3, 1])[2] == pytest.approx(0.6555555555555556)
    assert precision_recall_f1([1, 1, 1], [1, 1, 1]) == (1.0, 1.0, 1.0)
    assert confusion_matrix([1, 1, 1], [1, 1, 1]).tolist() == [[3]]
    # asking for the absent class counts it, with zero support, as sklearn does
    assert precision_recall_f1([1, 1, 1], [1, 1, 1], num_classes=2) == (0.5, 0.5, 0.5)
    assert precision_recall_f1([1, 1, 1], [1, 1, 1], labels=[0, 1]) == (0.5, 0.5, 0.5)
    # no listed class occurs in y_true: the weighted average has no weights, and sklearn gives 0
    from sklearn.metrics import precision_recall_fscore_support

    sk = precision_recall_fscore_support([0, 0], [1, 1], labels=[1], average="weighted", zero_division=0)
    assert precision_recall_f1([0, 0], [1, 1], labels=[1], average="weighted") == sk[:3] == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("seed", range(8))
def test_precision_recall_f1_match_sklearn_with_absent_classes(seed):
    rng = np.random.default_rng(100 + seed)
    ids = np.array([0, 2, 3, 7, 11, 40])  # sparse ids: 1, 4..6, 8..10, 12..39 never occur
    n = int(rng.integers(5, 200))
    y_true = rng.choice(ids[: rng.integers(2, 7)], size=n)
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.choice(ids, size=n))
    _assert_matches_sklearn(y_true, y_pred)
    _assert_matches_sklearn(y_true, y_pred, num_classes=41 + int(rng.integers(0, 3)))
    # labels: all present ones plus absent ones, in a random order
    superset = rng.permutation(np.union1d(np.union1d(y_true, y_pred), rng.choice(60, size=3, replace=False)))
    _assert_matches_sklearn(y_true, y_pred, labels=superset.tolist())
    # labels: a subset, as sklearn allows (e.g. leaving the majority class out of the micro average)
    subset = rng.permutation(np.union1d(y_true, y_pred))[: max(1, len(np.union1d(y_true, y_pred)) // 2)]
    _assert_matches_sklearn(y_true, y_pred, labels=subset.tolist())


def test_precision_recall_f1_with_huge_label_ids():
    # ids such as hashes or database keys: only the classes present are counted, no (max id)^2 matrix
    y_true = np.array([10**12, 3, 10**12, 7, 3, 2**62])
    y_pred = np.array([10**12, 3, 3, 7, 10**12, 2**62])
    _assert_matches_sklearn(y_true, y_pred)
    assert confusion_matrix(y_true, y_pred).shape == (4, 4)
    _assert_matches_sklearn(y_true, y_pred, labels=[2**62, 10**12, 5])


def test_classification_label_option_errors():
    with pytest.raises(ValueError, match="not both"):
        precision_recall_f1([0, 1], [0, 1], labels=[0, 1], num_classes=2)
    with pytest.raises(ValueError, match="labels lists class 1 more than once"):
        precision_recall_f1([0, 1], [0, 1], labels=[0, 1, 1])
    with pytest.raises(ValueError, match="labels is empty"):
        confusion_matrix([0, 1], [0, 1], labels=[])
    with pytest.raises(TypeError, match="num_classes must be an integer"):
        precision_recall_f1([0, 1], [0, 1], num_classes=True)
    with pytest.raises(ValueError, match=r"negative class id \(-100\).*padding"):
        precision_recall_f1([0, -100], [0, 1])


def test_classification_errors():
    with pytest.raises(ValueError, match="3 labels but y_pred has 2"):
        precision_recall_f1([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="average"):
        precision_recall_f1([0, 1], [0, 1], average="binary")
    with pytest.raises(ValueError, match="out of range for num_classes=2"):
        confusion_matrix([0, 1, 2], [0, 1, 1], num_classes=2)
    with pytest.raises(TypeError, match="integer class ids"):
        confusion_matrix([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        confusion_matrix([], [])
    with pytest.raises(ValueError, match="negative"):
        confusion_matrix([0, -1], [0, 1])


def test_calibration_bins_match_sklearn_and_ece():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(0)
    conf = np.concatenate([rng.uniform(0.3, 1.0, size=500), [0.0, 0.2, 0.4, 1.0]])  # include exact edges
    correct = rng.random(conf.size) < conf**2  # overconfident on purpose
    bins = calibration_bins(conf, correct, n_bins=10)
    assert bins["count"].sum() == conf.size
    prob_true, prob_pred = calibration_curve(correct, conf, n_bins=10, strategy="uniform")
    filled = bins["count"] > 0
    np.testing.assert_allclose(bins["accuracy"][filled], prob_true)
    np.testing.assert_allclose(bins["confidence"][filled], prob_pred)
    ece = expected_calibration_error(conf, correct, n_bins=10)
    manual = np.nansum(bins["count"] / conf.size * np.abs(bins["accuracy"] - bins["confidence"]))
    assert ece == pytest.approx(manual) and ece > 0.05
    # a calibrated predictor has a small ECE; a constant one that is always right has none
    calibrated = rng.random(conf.size) < conf
    assert expected_calibration_error(conf, calibrated, n_bins=10) < ece
    assert expected_calibration_error(np.ones(5), np.ones(5, dtype=bool)) == 0.0
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        expected_calibration_error([1.2], [True])
    with pytest.raises(ValueError, match="same length"):
        expected_calibration_error([0.5, 0.6], [True])
    with pytest.raises(ValueError, match="booleans"):
        expected_calibration_error([0.5], [2])
    with pytest.raises(ValueError, match="n_bins"):
        calibration_bins([0.5], [True], n_bins=0)


# ------------------------------------------------------------------------------------------ bootstrap


def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    trials, hits = 400, 0
    for trial in range(trials):
        sample = rng.normal(loc=2.0, scale=1.0, size=80)
        ci = bootstrap_ci(sample, n_resamples=400, confidence=0.9, seed=trial)
        assert ci.low <= ci.estimate <= ci.high
        hits += ci.low <= 2.0 <= ci.high
    coverage = hits / trials
    # nominal 0.90; the Monte Carlo error of 400 trials is about 0.015, and percentile intervals run a bit narrow
    assert 0.84 <= coverage <= 0.96, coverage


def test_bootstrap_ci_with_a_statistic_on_several_arrays():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 3, size=200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 3, size=200))

    def macro_f1(t, p):
        return precision_recall_f1(t, p, average="macro", num_classes=3)[2]

    ci = bootstrap_ci((y_true, y_pred), macro_f1, n_resamples=200, seed=0)
    assert ci.estimate == pytest.approx(macro_f1(y_true, y_pred))
    assert ci.low < ci.estimate < ci.high and ci.high - ci.low < 0.2
    assert bootstrap_ci((y_true, y_pred), macro_f1, n_resamples=200, seed=0) == ci  # seeded
    # corpus BLEU resamples sentences (rows of its statistics table)
    hyps, refs = _random_corpus(random.Random(5), n=30, n_refs=1)
    stats = bleu_statistics(hyps, refs)
    ci = bootstrap_ci(stats, lambda s: bleu_from_statistics(s).score, n_resamples=100)
    assert ci.estimate == pytest.approx(bleu(hyps, refs)) and ci.low <= ci.high


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(2)
    base = rng.normal(size=200)
    better = base + 0.3 + rng.normal(scale=0.5, size=200)
    same = base + rng.normal(scale=0.5, size=200)
    real = paired_bootstrap(better, base, n_resamples=500)
    assert real.delta == pytest.approx(better.mean() - base.mean())
    assert real.p_value < 0.01 and real.low > 0 and real.win_rate > 0.99
    # under the null the test rejects at about its level: count rejections over many data sets
    rejections = 0
    for trial in range(100):
        a = rng.normal(size=60)
        b = a + rng.normal(scale=0.5, size=60)
        rejections += paired_bootstrap(a, b, n_resamples=200, seed=trial).p_value < 0.05
    assert rejections <= 12


def test_bootstrap_errors():
    with pytest.raises(ValueError, match="at least 2 examples"):
        bootstrap_ci([1.0])
    with pytest.raises(ValueError, match="same length"):
        bootstrap_ci((np.zeros(3), np.zeros(4)), lambda a, b: 0.0)
    with pytest.raises(ValueError, match="pass a statistic"):
        bootstrap_ci((np.zeros(3), np.zeros(3)))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(np.zeros(3), confidence=95)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(np.zeros(3), n_resamples=0)
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap(np.zeros(3), np.zeros(4))


def test_bootstrap_rejects_nan_and_infinite_data():
    scores = np.array([0.2, 0.5, np.nan, 0.4])
    with pytest.raises(ValueError, match="data contains NaN or infinite values. Drop or re-score"):
        bootstrap_ci(scores)
    with pytest.raises(ValueError, match="data_a contains NaN or infinite"):
        paired_bootstrap(scores, np.zeros(4))  # used to give delta = NaN with p = 0.001
    with pytest.raises(ValueError, match="data_b contains NaN or infinite"):
        paired_bootstrap(np.zeros(4), np.array([0.1, np.inf, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"data\[1\] contains NaN or infinite"):
        bootstrap_ci((np.zeros(4), scores), lambda a, b: 0.0)
    with pytest.raises(ValueError, match="data contains NaN"):
        bootstrap_ci(torch.tensor([1.0, float("nan"), 2.0]))


def test_bootstrap_rejects_a_statistic_that_is_not_finite():
    with pytest.raises(ValueError, match="statistic of data is nan"):
        bootstrap_ci(np.arange(5.0), lambda x: math.nan)
    with pytest.raises(ValueError, match="statistic of data_b is inf"):
        paired_bootstrap(np.ones(5), np.zeros(5), lambda x: 1 / x.mean() if x.mean() else math.inf)

    # finite on the full data, but 0/0 on the resamples that draw only zeros
    def signal_to_noise(x):
        return float(x.mean()) / float(x.std()) if x.std() > 0 else math.nan

    data = np.array([0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"statistic is NaN or infinite on \d+ of 200 resamples"):
        bootstrap_ci(data, signal_to_noise, n_resamples=200)
    with pytest.raises(ValueError, match="NaN or infinite on"):
        paired_bootstrap(data, data[::-1].copy(), signal_to_noise, n_resamples=200)


# ---------------------------------------------------------------------------------------- ranking


def test_recall_at_k_and_mrr_by_hand():
    from llmbook.metrics import mean_reciprocal_rank, recall_at_k

    ranked = [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "d"]]
    relevant = ["a", "a", "a"]  # found at ranks 1, 2 and never
    assert recall_at_k(ranked, relevant, 1) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, relevant, 2) == pytest.approx(2 / 3)
    assert mean_reciprocal_rank(ranked, relevant) == pytest.approx((1 + 1 / 2 + 0) / 3)
    # Several relevant ids: the share of them found in the top k.
    assert recall_at_k([[1, 2, 3, 4]], [{2, 4, 9}], 2) == pytest.approx(1 / 3)
    assert mean_reciprocal_rank([[1, 2, 3, 4]], [{4, 3}]) == pytest.approx(1 / 3)
    # Repeated ids (labels of the retrieved items) count once; string ids are never split into letters.
    assert recall_at_k([["ab", "ab", "c"]], ["ab"], 1) == 1.0
    assert recall_at_k(np.array([[3, 3, 1]]), np.array([1]), 2) == 0.0


def test_ranking_metrics_match_sklearn():
    from sklearn.metrics import label_ranking_average_precision_score, top_k_accuracy_score

    from llmbook.metrics import mean_reciprocal_rank, recall_at_k

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 12))
    truth = rng.integers(0, 12, 200)
    ranked = np.argsort(-scores, axis=1)
    for k in (1, 3, 5):
        assert recall_at_k(ranked, truth, k) == pytest.approx(top_k_accuracy_score(truth, scores, k=k, labels=range(12)))
    indicator = np.eye(12, dtype=int)[truth]
    assert mean_reciprocal_rank(ranked, truth) == pytest.approx(label_ranking_average_precision_score(indicator, scores))


def test_ranking_metrics_errors():
    from llmbook.metrics import mean_reciprocal_rank, recall_at_k

    with pytest.raises(ValueError, match=r"k=3 but ranked\[0\] lists only 2 ids"):
        recall_at_k([[1, 2]], [1], 3)
    with pytest.raises(ValueError, match="k must be at least 1"):
        recall_at_k([[1, 2]], [1], 0)
    with pytest.raises(ValueError, match="2 queries but relevant has 1"):
        mean_reciprocal_rank([[1], [2]], [1])
    with pytest.raises(ValueError, match=r"relevant\[0\] is empty"):
        recall_at_k([[1, 2]], [set()], 1)
    with pytest.raises(TypeError, match=r"ranked\[0\] is int"):
        recall_at_k([1, 2, 3], [1, 2, 3], 1)
    with pytest.raises(ValueError, match="ranked is empty"):
        mean_reciprocal_rank([], [])
    with pytest.raises(TypeError, match="ranked must hold one list"):
        mean_reciprocal_rank("abc", ["a"])


# --- chrF statistics (issue 21) -------------------------------------------------------------------

def test_chrf_from_statistics_equals_sacrebleu_with_uneven_references():
    import sacrebleu

    from llmbook.metrics import chrf_from_statistics, chrf_statistics

    hyps = ["le chat est sur le tapis", "il fait beau", "je ne sais pas"]
    refs = [["le chat est assis sur le tapis", "un chat sur le tapis"], ["il fait beau aujourd'hui"],
            ["je sais pas", "je ne le sais pas"]]
    stats = chrf_statistics(hyps, refs)
    assert stats.shape[0] == 3
    padded = [[r[k] if k < len(r) else r[0] for r in refs] for k in range(2)]
    expected = sacrebleu.corpus_chrf(hyps, padded).score
    assert chrf_from_statistics(stats) == pytest.approx(expected, abs=1e-9)
    # a subset of rows is the chrF of that subset
    assert chrf_from_statistics(stats[:2]) == pytest.approx(
        sacrebleu.corpus_chrf(hyps[:2], [[r[k] if k < len(r) else r[0] for r in refs[:2]] for k in range(2)]).score)


def test_chrf_statistics_rejects_mismatched_references():
    from llmbook.metrics import chrf_from_statistics, chrf_statistics

    with pytest.raises(ValueError, match="one list of reference strings per hypothesis"):
        chrf_statistics(["a b"], [["a"], ["b"]])
    with pytest.raises(ValueError, match=r"references\[0\]"):
        chrf_statistics(["a b"], [[]])
    with pytest.raises(ValueError, match="2-D"):
        chrf_from_statistics(np.zeros(3))
