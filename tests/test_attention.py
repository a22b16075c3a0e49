"""llmbook.attention against PyTorch: F.scaled_dot_product_attention and nn.MultiheadAttention."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmbook.attention import MultiHeadAttention, causal_mask, padding_mask, scaled_dot_product_attention

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def random_lengths(generator, batch, length):
    """Key lengths between 1 and ``length``, the longest always present; as a tokenizer's 0/1 mask."""
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length
    return (torch.arange(length)[None, :] < lengths[:, None]).long()


def reference_weights(q, k, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_sdpa_matches_pytorch_on_random_shapes(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    batch, heads = torch.randint(1, 4, (2,), generator=g).tolist()
    l_q, l_k, d_k, d_v = torch.randint(1, 12, (4,), generator=g).tolist()
    q = torch.randn(batch, heads, l_q, d_k, generator=g, dtype=dtype)
    k = torch.randn(batch, heads, l_k, d_k, generator=g, dtype=dtype)
    v = torch.randn(batch, heads, l_k, d_v, generator=g, dtype=dtype)
    out, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **TOL[dtype])
    torch.testing.assert_close(weights, reference_weights(q, k), **TOL[dtype])
    assert out.shape == (batch, heads, l_q, d_v) and weights.shape == (batch, heads, l_q, l_k)
    assert out.dtype == weights.dtype == dtype
    torch.testing.assert_close(weights.sum(-1), torch.ones(batch, heads, l_q, dtype=dtype), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["padding", "causal", "both", "random"])
def test_sdpa_with_masks_matches_pytorch(dtype, kind):
    g = torch.Generator().manual_seed(1)
    batch, heads, length, d = 3, 2, 7, 5
    q, k, v = (torch.randn(batch, heads, length, d, generator=g, dtype=dtype) for _ in range(3))
    pad = padding_mask(random_lengths(g, batch, length))
    mask = {
        "padding": pad,
        "causal": causal_mask(length),
        "both": pad & causal_mask(length),
        "random": torch.rand(batch, 1, length, length, generator=g) < 0.6,
    }[kind]
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **TOL[dtype])
    full = mask.expand_as(weights)
    assert (weights[~full] == 0).all(), "masked positions must get exactly zero weight"
    rows = full.any(-1)
    torch.testing.assert_close(weights[rows], reference_weights(q, k, mask)[rows], **TOL[dtype])
    if kind == "causal":
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), **TOL[dtype])


def test_padding_does_not_change_the_real_tokens():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 6, 4, generator=g) for _ in range(3))
    short, _ = scaled_dot_product_attention(q, k[:, :4], v[:, :4])
    padded_k = torch.cat([k[:, :4], torch.randn(1, 2, 4, generator=g) * 100], dim=1)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    out, weights = scaled_dot_product_attention(q, padded_k, v, mask=mask)
    torch.testing.assert_close(out, short)
    assert (weights[..., 4:] == 0).all()


def test_fully_masked_row_gives_zeros_like_pytorch_and_input_nan_stays_visible():
    q, k, v = torch.randn(1, 3, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 2)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    assert (weights[:, 1] == 0).all() and (out[:, 1] == 0).all()
    assert not out.isnan().any()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    q[0, 0, 0] = float("nan")
    out, _ = scaled_dot_product_attention(q, k, v, mask=torch.ones(3, 5, dtype=torch.bool))
    assert out[0, 0].isnan().all(), "a NaN in the inputs must not be hidden by the mask handling"


def test_broadcasting_batch_dimensions_and_3d_inputs():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 5, 4, generator=g)
    k, v = torch.randn(1, 3, 6, 4, generator=g), torch.randn(1, 3, 6, 7, generator=g)
    out, weights = scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 3, 5, 7) and weights.shape == (2, 3, 5, 6)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1)))
    out2, _ = scaled_dot_product_attention(q[0], k[0], v[0])  # (heads, L, d) with no batch dimension
    torch.testing.assert_close(out2, out[0])


def test_dropout_zeroes_and_rescales_weights():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 1, 64, 8), torch.randn(1, 1, 64, 8), torch.randn(1, 1, 64, 8)
    _, plain = scaled_dot_product_attention(q, k, v)
    _, dropped = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    kept = dropped != 0
    assert 0.3 < kept.float().mean() < 0.7
    torch.testing.assert_close(dropped[kept], plain[kept] * 2)


def test_causal_and_padding_mask_helpers():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    m = padding_mask(torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert m.shape == (2, 1, 1, 3) and m.dtype == torch.bool
    assert m[1, 0, 0].tolist() == [True, False, False]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["none", "padding", "causal", "cross"])
def test_multi_head_attention_matches_nn_multihead_attention(dtype, bias, kind):
    torch.manual_seed(4)
    d_model, heads, batch, l_q = 12, 3, 3, 5
    l_k = 7 if kind == "cross" else l_q
    ours = MultiHeadAttention(d_model, heads, bias=bias).to(dtype).eval()
    ref = nn.MultiheadAttention(d_model, heads, bias=bias, batch_first=True, dtype=dtype).eval()
    with torch.no_grad():  # nn.MultiheadAttention stacks the q, k, v projections in one matrix
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        if bias:
            ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
            ref.out_proj.bias.copy_(ours.out_proj.bias)
    query = torch.randn(batch, l_q, d_model, dtype=dtype)
    key = torch.randn(batch, l_k, d_model, dtype=dtype)
    value = torch.randn(batch, l_k, d_model, dtype=dtype)
    if kind == "none" or kind == "cross":
        mask, ref_kwargs = None, {}
    elif kind == "padding":
        attention_mask = random_lengths(torch.Generator().manual_seed(5), batch, l_k)
        mask, ref_kwargs = padding_mask(attention_mask), {"key_padding_mask": attention_mask == 0}
    else:  # PyTorch's module uses the opposite convention: True = blocked
        mask, ref_kwargs = causal_mask(l_q), {"attn_mask": ~causal_mask(l_q)}
    out, weights = ours(query, key, value, mask=mask)
    ref_out, ref_weights = ref(query, key, value, need_weights=True, average_attn_weights=False, **ref_kwargs)
    assert out.shape == (batch, l_q, d_model) and weights.shape == (batch, heads, l_q, l_k)
    torch.testing.assert_close(out, ref_out, **TOL[dtype])
    torch.testing.assert_close(weights, ref_weights, **TOL[dtype])


def test_multi_head_attention_dropout_only_in_training():
    torch.manual_seed(6)
    mha = MultiHeadAttention(8, 2, dropout=0.5)
    x = torch.randn(2, 10, 8)
    mha.eval()
    a, _ = mha(x, x, x)
    b, _ = mha(x, x, x)
    torch.testing.assert_close(a, b)
    mha.train()
    _, w = mha(x, x, x)
    assert (w == 0).any()


def test_multi_head_attention_counts_and_gradients():
    mha = MultiHeadAttention(16, 4)
    assert sum(p.numel() for p in mha.parameters()) == 4 * (16 * 16 + 16)
    x = torch.randn(2, 5, 16, requires_grad=True)
    out, _ = mha(x, x, x, mask=causal_mask(5))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in mha.parameters())
    # causality: changing the last token must not change the earlier outputs
    y = x.detach().clone()
    y[:, -1] += 1.0
    out2, _ = mha(y, y, y, mask=causal_mask(5))
    torch.testing.assert_close(out2[:, :-1], out.detach()[:, :-1])


# --- error paths -----------------------------------------------------------------------------------

def _qkv(*shapes, dtype=torch.float32):
    return [torch.randn(s, dtype=dtype) for s in shapes]


@pytest.mark.parametrize(
    "shapes, match",
    [
        (((4,), (4, 3), (4, 3)), r"at least 2 dimensions.*\(4,\)"),
        (((2, 5, 4), (2, 6, 3), (2, 6, 3)), r"last dimension d_k: q \(2, 5, 4\), k \(2, 6, 3\)"),
        (((2, 5, 4), (2, 6, 4), (2, 7, 4)), r"same length L_k: k \(2, 6, 4\), v \(2, 7, 4\)"),
        (((2, 5, 4), (3, 6, 4), (3, 6, 4)), r"batch dimensions of q \(2, 5, 4\), k \(3, 6, 4\)"),
    ],
)
def test_sdpa_shape_errors_state_the_shapes(shapes, match):
    with pytest.raises(ValueError, match=match):
        scaled_dot_product_attention(*_qkv(*shapes))


def test_sdpa_dtype_and_type_errors():
    q, k, v = _qkv((2, 3), (2, 3), (2, 3))
    with pytest.raises(ValueError, match="share one dtype; got torch.float32, torch.float64"):
        scaled_dot_product_attention(q, k.double(), v)
    with pytest.raises(ValueError, match="floating point.*torch.int64"):
        scaled_dot_product_attention(q.long(), k.long(), v.long())
    with pytest.raises(TypeError, match="k must be a torch.Tensor, got list"):
        scaled_dot_product_attention(q, k.tolist(), v)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\), got 1.0"):
        scaled_dot_product_attention(q, k, v, dropout_p=1.0)
    with pytest.raises(TypeError, match="dropout_p must be a float"):
        scaled_dot_product_attention(q, k, v, dropout_p="0.1")


def test_sdpa_mask_errors():
    q, k, v = _qkv((2, 1, 5, 4), (2, 1, 6, 4), (2, 1, 6, 4))
    with pytest.raises(ValueError, match=r"mask of shape \(5, 5\) does not broadcast .* \(2, 1, 5, 6\)"):
        scaled_dot_product_attention(q, k, v, mask=causal_mask(5))
    with pytest.raises(ValueError, match=r"mask of shape \(3, 1, 1, 6\)"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(3, 1, 1, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask of shape \(1, 2, 1, 5, 6\)"):  # would enlarge the output
        scaled_dot_product_attention(q, k, v, mask=torch.ones(1, 2, 1, 5, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean.*torch.int64.*padding_mask"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(5, 6, dtype=torch.long))
    with pytest.raises(TypeError, match="mask must be a boolean torch.Tensor"):
        scaled_dot_product_attention(q, k, v, mask=[[True] * 6] * 5)


def test_mask_helper_errors():
    with pytest.raises(ValueError, match="length must be positive, got 0"):
        causal_mask(0)
    with pytest.raises(TypeError, match="length must be an int"):
        causal_mask(2.5)
    with pytest.raises(ValueError, match=r"\(batch, length\), got shape \(4,\)"):
        padding_mask(torch.ones(4))
    with pytest.raises(ValueError, match="only 0"):
        padding_mask(torch.tensor([[1, 2, 0]]))
    with pytest.raises(TypeError, match="attention_mask must be a torch.Tensor"):
        padding_mask([[1, 0]])


def test_multi_head_attention_errors():
    with pytest.raises(ValueError, match="d_model=10 is not divisible by num_heads=3"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="must be positive, got 0 and 2"):
        MultiHeadAttention(0, 2)
    with pytest.raises(TypeError, match="num_heads must be an int"):
        MultiHeadAttention(8, 2.0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        MultiHeadAttention(8, 2, dropout=1.5)
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"key must be \(batch, length, d_model=8\), got \(2, 5, 6\)"):
        mha(x, torch.randn(2, 5, 6), x)
    with pytest.raises(ValueError, match=r"query must be \(batch, length, d_model=8\), got \(5, 8\)"):
        mha(x[0], x, x)
    with pytest.raises(ValueError, match=r"query \(2, 5, 8\), key \(2, 5, 8\) and value \(2, 4, 8\)"):
        mha(x, x, torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match=r"query \(3, 5, 8\), key \(2, 5, 8\)"):
        mha(torch.randn(3, 5, 8), x, x)
    with pytest.raises(ValueError, match="dtypes torch.float64.*weights are torch.float32"):
        mha(x.double(), x.double(), x.double())
    with pytest.raises(ValueError, match=r"mask of shape \(4, 4\) does not broadcast .* \(2, 2, 5, 5\)"):
        mha(x, x, x, mask=causal_mask(4))
    with pytest.raises(ValueError, match=r"3-D mask of shape \(2, 5, 5\) is ambiguous"):
        mha(x, x, x, mask=causal_mask(5).expand(2, 5, 5))
    out, _ = mha(x, x, x, mask=causal_mask(5)[None])  # a 3-D mask with batch 1 is fine
    assert out.shape == x.shape


# --- mask layouts of MultiHeadAttention (issue 22) -------------------------------------------------

def test_multi_head_attention_refuses_a_2d_mask_when_batch_equals_length():
    # batch == L_q == L_k == 3: a raw (batch, L) padding mask has the shape of an (L_q, L_k) pattern.
    # Broadcasting used to read it as (L_q, L_k) and silently mask query positions instead of sequences.
    torch.manual_seed(7)
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(3, 3, 8)
    attention_mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"2-D mask of shape \(3, 3\) is ambiguous.*padding_mask\(attention_mask\)"):
        mha(x, x, x, mask=attention_mask.bool())
    with pytest.raises(ValueError, match=r"ambiguous.*mask\[None, None\]"):
        mha(x, x, x, mask=causal_mask(3))
    # The unambiguous forms give the right answers: each sequence attended alone, without padding ...
    out, _ = mha(x, x, x, mask=padding_mask(attention_mask))
    for b, length in enumerate(attention_mask.sum(dim=1).tolist()):
        alone, _ = mha(x[b:b + 1, :, :], x[b:b + 1, :length], x[b:b + 1, :length])
        torch.testing.assert_close(out[b], alone[0])
    # ... and one causal pattern for every sequence, as a batch of one sees it.
    out, _ = mha(x, x, x, mask=causal_mask(3)[None, None])
    for b in range(3):
        torch.testing.assert_close(out[b], mha(x[b:b + 1], x[b:b + 1], x[b:b + 1], mask=causal_mask(3))[0][0])


def test_multi_head_attention_2d_padding_mask_points_to_padding_mask():
    mha = MultiHeadAttention(8, 2)
    query, memory = torch.randn(2, 4, 8), torch.randn(2, 5, 8)
    raw = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()  # (batch, L_k), not (L_q, L_k)
    with pytest.raises(ValueError, match=r"\(2, 5\) looks like a \(batch, L_k\) padding mask.*\(4, 5\).*padding_mask"):
        mha(query, memory, memory, mask=raw)
    out, _ = mha(query, memory, memory, mask=padding_mask(raw))
    assert out.shape == (2, 4, 8)
    # 2-D patterns whose first dimension is not the batch size keep working: (L_q, L_k) and (1, L_k)
    assert mha(query, memory, memory, mask=torch.ones(4, 5, dtype=torch.bool))[0].shape == (2, 4, 8)
    assert mha(query, memory, memory, mask=raw[1:])[0].shape == (2, 4, 8)
    one = torch.randn(1, 3, 8)  # batch 1: a (1, L_k) mask means the same under both readings
    assert mha(one, one, one, mask=torch.tensor([[True, True, False]]))[0].shape == (1, 3, 8)


def test_multi_head_attention_refuses_a_string_for_bias():
    with pytest.raises(TypeError, match="bias must be True or False, got 'false'"):
        MultiHeadAttention(8, 2, bias="false")
    with pytest.raises(TypeError, match="dropout must be a float"):
        MultiHeadAttention(8, 2, dropout="0.1")
