"""Tests of llmbook.gpt: causality, the KV cache, sampling supports, determinism and error paths."""

import pytest
import torch

from llmbook.gpt import (
    GPT,
    GPTConfig,
    KVCache,
    configure_optimizer,
    evaluate_loss,
    filter_logits,
    generate,
    get_batch,
    lr_at,
)


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


@pytest.mark.parametrize("impl", ["naive", "sdpa"])
def test_causality_future_tokens_do_not_change_past_logits(impl):
    model = tiny(attn_impl=impl)
    idx = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 3) % 11
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_naive_and_fused_attention_agree():
    naive, fused = tiny(attn_impl="naive"), tiny(attn_impl="sdpa")
    fused.load_state_dict(naive.state_dict())
    idx = torch.randint(0, 11, (3, 16))
    with torch.no_grad():
        torch.testing.assert_close(naive(idx)[0], fused(idx)[0], atol=1e-5, rtol=1e-5)


def test_weight_tying_and_parameter_count():
    model = tiny()
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    # nanoGPT's cpu shakespeare recipe: about 0.8M parameters
    big = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128))
    assert 0.79e6 < big.num_params() < 0.82e6


def test_loss_at_init_is_near_uniform():
    model = tiny()
    idx, targets = torch.randint(0, 11, (2, 4, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - torch.log(torch.tensor(11.0)).item()) < 0.3


@pytest.mark.parametrize("impl", ["naive", "sdpa"])
def test_cached_logits_equal_full_forward(impl):
    model = tiny(attn_impl=impl)
    idx = torch.randint(0, 11, (2, 10))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(2)
        first, _ = model(idx[:, :4], cache=cache)  # prefill several tokens, then one at a time
        steps = [first] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(4, 10)]
        # prefill two at once after a cached prefix: the mask must be offset, not top-left aligned
        cache2 = model.new_cache(2)
        model(idx[:, :5], cache=cache2)
        two, _ = model(idx[:, 5:7], cache=cache2)
    assert cache.length == 10
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(two, full[:, 5:7], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["naive", "sdpa"])
def test_cached_generation_equals_uncached(impl):
    model = tiny(attn_impl=impl)
    prompt = torch.randint(0, 11, (2, 3))
    # greedy, and past block_size=16 so the sliding window is exercised
    a = generate(model, prompt, 25, greedy=True, use_cache=True)
    b = generate(model, prompt, 25, greedy=True, use_cache=False)
    assert a.shape == (2, 28)
    assert torch.equal(a, b)
    s1 = generate(model, prompt, 10, temperature=1.0, top_k=5, use_cache=True, generator=torch.Generator().manual_seed(3))
    s2 = generate(model, prompt, 10, temperature=1.0, top_k=5, use_cache=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2)


def test_seeded_generation_is_deterministic():
    model = tiny()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    runs = [generate(model, prompt, 30, temperature=1.5, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = generate(model, prompt, 30, temperature=1.5, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)


def test_top_k_support():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = filter_logits(logits, top_k=2).isfinite()
    assert kept.tolist() == [[False, True, False, True, False]]
    model = tiny()
    with torch.no_grad():
        last = model(torch.zeros(1, 1, dtype=torch.long))[0][0, -1]
    allowed = set(torch.topk(last, 3).indices.tolist())
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        out = generate(model, torch.zeros(1, 1, dtype=torch.long), 1, temperature=3.0, top_k=3, generator=g)
        assert out[0, 1].item() in allowed


def test_top_p_support():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert filter_logits(logits, top_p=0.5).isfinite().tolist() == [[True, False, False, False]]
    assert filter_logits(logits, top_p=0.7).isfinite().tolist() == [[True, True, False, False]]
    assert filter_logits(logits, top_p=0.81).isfinite().tolist() == [[True, True, True, False]]
    assert filter_logits(logits, top_p=1.0).isfinite().all()
    shuffled = logits[:, [2, 0, 3, 1]]  # order of the vocabulary does not matter
    assert filter_logits(shuffled, top_p=0.7).isfinite().tolist() == [[False, True, False, True]]
    g = torch.Generator().manual_seed(0)
    samples = torch.multinomial(torch.softmax(filter_logits(logits.repeat(500, 1), top_p=0.7), -1), 1, generator=g)
    assert set(samples.flatten().tolist()) == {0, 1}


def test_get_batch_targets_are_shifted_inputs():
    data = torch.arange(100)
    x, y = get_batch(data, 5, 8, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8) and x.dtype == torch.long
    assert torch.equal(y, x + 1)
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)


def test_lr_schedule_and_optimizer_groups():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(100, 1.0, 10, 100, min_lr=0.1) == pytest.approx(0.1)
    assert 0.1 < lr_at(55, 1.0, 10, 100, min_lr=0.1) < 1.0
    opt = configure_optimizer(tiny(), 1e-3)
    assert all(p.dim() >= 2 for p in opt.param_groups[0]["params"])
    assert all(p.dim() < 2 for p in opt.param_groups[1]["params"]) and opt.param_groups[1]["weight_decay"] == 0


def test_training_steps_reduce_loss_and_evaluate_loss():
    model = tiny().train()
    data = torch.arange(400) % 11  # a perfectly predictable sequence
    opt = configure_optimizer(model, 3e-3)
    g = torch.Generator().manual_seed(0)
    before = evaluate_loss(model, data)
    for _ in range(60):
        x, y = get_batch(data, 8, 16, generator=g)
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert evaluate_loss(model, data) < before - 1.0


def test_error_paths():
    model = tiny()
    prompt = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prompt, 5, temperature=-1.0)
    with pytest.raises(ValueError, match="greedy=True"):
        generate(model, prompt, 5, temperature=0.0)
    assert torch.equal(generate(model, prompt, 5, temperature=0.0, greedy=True), generate(model, prompt, 5, greedy=True))
    with pytest.raises(ValueError, match="top_p"):
        generate(model, prompt, 5, top_p=0.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, prompt, 5, top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, prompt, 5, top_k=0)
    with pytest.raises(ValueError, match="block_size"):
        generate(model, torch.zeros(1, 17, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="attn_impl"):
        GPTConfig(attn_impl="flash")
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"vocab_size": 3})
    cache = model.new_cache(1, max_len=4)
    model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    assert isinstance(cache, KVCache)
    with pytest.raises(ValueError, match="full"):
        model.blocks[0].attn(torch.zeros(1, 1, 16), cache)
    with pytest.raises(ValueError, match="block_size"):
        get_batch(torch.arange(5), 2, 8)


# ------------------------------------------------------------------ hostile input (issue 22)


@pytest.mark.parametrize("bad", [11, -1])
def test_token_ids_outside_the_vocabulary_are_named(bad):
    model = tiny()  # vocab_size=11
    idx = torch.tensor([[1, 2, bad, 3]])
    message = rf"idx holds token id {bad}, outside the vocabulary \[0, 11\).*vocab_size=11"
    with pytest.raises(ValueError, match=message):
        model(idx)
    with pytest.raises(ValueError, match=message):
        generate(model, idx, 3)
    with pytest.raises(ValueError, match=rf"data holds token id {bad}.*vocab_size=11"):
        evaluate_loss(model, torch.tensor([1, 2, 3, bad] * 10), block_size=8)
    with pytest.raises(ValueError, match=rf"targets holds token id {bad}.*vocab_size=11"):
        model(idx.clamp(0, 10), idx)
    # -100 is cross_entropy's ignore_index: such targets are left out of the loss, not refused.
    targets = torch.tensor([[2, 3, -100, 4]])
    loss = model(idx.clamp(0, 10), targets)[1]
    expected = torch.nn.functional.cross_entropy(model(idx.clamp(0, 10))[0][0], targets[0])
    torch.testing.assert_close(loss, expected)


def broken_model() -> GPT:
    model = tiny()
    with torch.no_grad():
        model.ln_f.weight.fill_(float("nan"))  # every logit becomes NaN
    return model


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_refuses_non_finite_logits(use_cache):
    # Greedy decoding used to return token 0 (argmax of NaN) every step, silently.
    model, prompt = broken_model(), torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="logits at generation step 1 contain NaN or infinite values"):
        generate(model, prompt, 3, greedy=True, use_cache=use_cache)
    with pytest.raises(ValueError, match="logits at generation step 1 contain NaN"):
        generate(model, prompt, 3, temperature=0.8, top_k=3, use_cache=use_cache)
    with pytest.raises(ValueError, match="temperature=1e-45 is so small"):
        generate(tiny(), prompt, 3, temperature=1e-45, use_cache=use_cache)


def test_filter_logits_refuses_non_finite_logits_but_keeps_minus_inf():
    for logits in ([1.0, float("nan"), 3.0], [1.0, float("inf"), 3.0], [float("-inf")] * 3):
        with pytest.raises(ValueError, match="NaN or \\+inf, or a row with no finite value"):
            filter_logits(torch.tensor([logits]), top_k=2)
    # -inf marks tokens a filter already dropped, so filters chain.
    once = filter_logits(torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]]), top_k=3)
    assert filter_logits(once, top_p=0.5).isfinite().tolist() == [[False, True, False, False, False]]


def test_kv_cache_of_the_wrong_batch_size_or_without_room():
    model = tiny()
    cache = model.new_cache(batch=2)
    with pytest.raises(ValueError, match=r"holds 2 sequences but idx has a batch of 3.*new_cache\(batch=3\)"):
        model(torch.zeros(3, 4, dtype=torch.long), cache=cache)
    # A batch of one used to broadcast into the batch-2 cache, then fail in a reshape deep inside attention.
    with pytest.raises(ValueError, match=r"holds 2 sequences but idx has a batch of 1"):
        model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    assert cache.length == 0
    small = model.new_cache(batch=1, max_len=4)
    model(torch.zeros(1, 3, dtype=torch.long), cache=small)
    with pytest.raises(ValueError, match=r"3 cached \+ 2 new positions exceed its max_len=4.*new_cache\(batch, max"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=small)
    assert small.length == 3  # the failed call left the cache as it was
    other = tiny(n_layer=3).new_cache(batch=1)
    with pytest.raises(ValueError, match="made for another model"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=other)
    with pytest.raises(TypeError, match="batch must be an integer"):
        model.new_cache(batch="2")


def test_evaluate_loss_argument_checks():
    model, data = tiny(), torch.arange(100) % 11
    # batch_size=-1 used to skip every window and return a loss of 0.0.
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"batch_size must be at least 1, got {bad}"):
            evaluate_loss(model, data, batch_size=bad)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        evaluate_loss(model, data, batch_size=2.5)
    with pytest.raises(ValueError, match=r"block_size=32 is longer than the model's context \(block_size=16\)"):
        evaluate_loss(model, data, block_size=32)
    with pytest.raises(ValueError, match="block_size must be at least 1, got 0"):  # used to mean the default
        evaluate_loss(model, data, block_size=0)
    with pytest.raises(ValueError, match="data has 10 tokens, too few for one window of 16: it needs at least 17"):
        evaluate_loss(model, data[:10])
    with pytest.raises(ValueError, match="max_windows must be at least 1"):
        evaluate_loss(model, data, max_windows=0)
    with pytest.raises(ValueError, match="data must be a 1-D tensor"):
        evaluate_loss(model, data.view(10, 10))
    assert evaluate_loss(model, data, batch_size=1) == pytest.approx(evaluate_loss(model, data), rel=1e-5)


def test_boolean_flags_refuse_strings():
    model, prompt = tiny(), torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(TypeError, match="use_cache must be True or False, got 'false'"):
        generate(model, prompt, 3, use_cache="false")
    with pytest.raises(TypeError, match="greedy must be True or False, got 'false'"):
        generate(model, prompt, 3, greedy="false")
    with pytest.raises(TypeError, match="GPTConfig.bias must be True or False"):
        GPTConfig(bias="false")


# ----------------------------------------------------------------------------------------------
# Checkpoints (chapter 4 saves, chapter 7 loads) and GPT-2 weights
# ----------------------------------------------------------------------------------------------

from llmbook import gpt as gpt_module  # noqa: E402


def test_checkpoint_round_trip_gives_the_same_logits_vocabulary_and_metadata(tmp_path):
    model = tiny(gelu_approximate="tanh")
    chars = list("abcdefghij\n")
    path = gpt_module.save_gpt_checkpoint(tmp_path / "gpt_smoke.pt", model, chars, scale="smoke",
                                          metadata={"val_loss": 1.5, "steps": 40})
    assert [p.name for p in tmp_path.iterdir()] == ["gpt_smoke.pt"]  # no temporary file left behind
    loaded, loaded_chars, meta = gpt_module.load_gpt_checkpoint(path)
    assert loaded_chars == chars and loaded.config == model.config and not loaded.training
    assert meta == {"val_loss": 1.5, "steps": 40, "dataset": "tiny_shakespeare",
                    "validation_split": "validation", "scale": "smoke"}
    idx = torch.randint(0, 11, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)
    assert loaded.lm_head.weight is loaded.tok_emb.weight  # the tie survives loading


def test_checkpoint_encode_decode_and_unknown_characters(tmp_path):
    ckpt_path = gpt_module.save_gpt_checkpoint(tmp_path / "g.pt", tiny(), "abcdefghij\n", scale="cpu")
    ckpt = gpt_module.load_gpt_checkpoint(ckpt_path)
    ids = ckpt.encode("bad\nhi")
    assert ids.dtype == torch.long and ckpt.decode(ids) == "bad\nhi"
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        ckpt.encode("bad Z")


def test_checkpoint_rejects_a_vocabulary_of_the_wrong_size_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="vocab_size is 11"):
        gpt_module.save_gpt_checkpoint(tmp_path / "g.pt", tiny(), list("abc"))
    with pytest.raises(ValueError, match="twice"):
        gpt_module.save_gpt_checkpoint(tmp_path / "g.pt", tiny(), list("aacdefghij\n"))
    assert not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="run the GPT chapter"):
        gpt_module.load_gpt_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read the GPT checkpoint .*junk.pt.*run the GPT chapter"):
        gpt_module.load_gpt_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a GPT checkpoint"):
        gpt_module.load_gpt_checkpoint(tmp_path / "other.pt")


def test_gelu_approximate_is_checked_and_changes_the_function():
    with pytest.raises(ValueError, match="gelu_approximate"):
        GPTConfig(gelu_approximate="fast")
    idx = torch.randint(0, 11, (1, 8), generator=torch.Generator().manual_seed(0))
    exact, tanh = tiny(), tiny(gelu_approximate="tanh")
    tanh.load_state_dict(exact.state_dict())
    assert not torch.equal(exact(idx)[0], tanh(idx)[0])


def small_hf_gpt2(**kw):
    transformers = pytest.importorskip("transformers")
    settings = dict(vocab_size=50, n_positions=24, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                    eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    settings.update(kw)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**settings)).eval()
    with torch.no_grad():  # GPT-2 initialises biases and LayerNorms to constants: make them informative
        for name, p in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return hf


@pytest.mark.parametrize("impl", ["naive", "sdpa"])
def test_gpt2_weights_give_transformers_logits(impl):
    hf = small_hf_gpt2()
    ours = gpt_module.gpt_from_gpt2(hf, attn_impl=impl)
    assert ours.config.gelu_approximate == "tanh" and ours.config.block_size == 24
    idx = torch.randint(0, 50, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        got, _ = ours(idx)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # The KV cache path gives the same next-token choice as transformers' own greedy decoding.
    prompt = idx[:1, :5]
    theirs = hf.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(ours, prompt, 8, greedy=True), theirs)


def test_gpt2_conversion_rejects_what_our_model_cannot_compute():
    with pytest.raises(ValueError, match="layer_norm_epsilon"):
        gpt_module.config_from_gpt2(small_hf_gpt2(layer_norm_epsilon=1e-6).config)
    with pytest.raises(ValueError, match="activation"):
        gpt_module.config_from_gpt2(small_hf_gpt2(activation_function="relu").config)
    hf = small_hf_gpt2()
    config = gpt_module.config_from_gpt2(hf.config)
    state = dict(hf.state_dict())
    del state["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(KeyError, match="h.1.mlp.c_fc.bias"):
        gpt_module.convert_gpt2_state_dict(state, config)
    state = dict(hf.state_dict(), **{"transformer.h.0.attn.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="no place"):
        gpt_module.convert_gpt2_state_dict(state, config)


def test_forward_traces_without_graph_breaks_for_torch_compile():
    from llmbook import gpt

    # the token-id range checks read tensor values; under torch.compile they would split the graph
    model = gpt.GPT(gpt.GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16, attn_impl="sdpa"))
    idx = torch.randint(0, 20, (2, 8))
    explanation = torch._dynamo.explain(model)(idx, idx)
    assert explanation.graph_break_count == 0, explanation.break_reasons
