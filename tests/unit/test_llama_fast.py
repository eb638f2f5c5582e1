"""smolforge.core.llama (the training-time Llama) against transformers' LlamaForCausalLM with
the same weights: logits and gradients for plain, jumping-position, packed (4D mask), GQA
and logits_to_keep inputs, in its fast ops and in its plain ones (torch.compile, autocast);
HF's state-dict names; the init; and the saved folder loading back in transformers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smolforge.core import llama
from smolforge.core import model as model_lib
from smolforge.core.model import LlamaShape

VOCAB, PAD = 40, 0


def config(n_kv_heads: int = 4, tie: bool = True):
    shape = LlamaShape(
        dim=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, ffn_dim=48, max_seq_len=64, rope_theta=10000.0
    )
    c = model_lib.llama_config(shape, VOCAB, 1, 2, PAD)
    c.tie_word_embeddings = tie
    c.initializer_range = 0.2  # larger weights than training starts from: differences show
    return c


def pair(n_kv_heads: int = 4, tie: bool = True, seed: int = 0):
    """(training model, transformers' model with its weights), both float32 on CPU."""
    torch.set_num_threads(1)
    fast = model_lib.build(config(n_kv_heads, tie), seed)
    return fast, model_lib.to_hf(fast)


def inputs(B: int = 3, T: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def packed(T: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids and a (1, 1, T, T) "may attend" mask of three examples back to back."""
    seg = torch.tensor([0] * 6 + [1] * 9 + [2] * (T - 15))
    pos = torch.cat([torch.arange(n) for n in torch.bincount(seg).tolist()])[None]
    mask = (seg[:, None] == seg[None, :]) & torch.ones(T, T, dtype=torch.bool).tril()
    return pos, mask[None, None]


def jumping_positions(B: int = 3, T: int = 20) -> torch.Tensor:
    """Increasing position ids with jumps (as the nets track spreads them), up to 60."""
    steps = torch.randint(1, 5, (B, T), generator=torch.Generator().manual_seed(2))
    return (steps.cumsum(1) - steps[:, :1]).clamp(max=60)


def assert_close_grads(fast, hf) -> None:
    """Every parameter's gradient within 1e-5 of HF's, relative to its norm."""
    hf_grads = dict(hf.named_parameters())
    for name, p in fast.named_parameters():
        want = hf_grads[name].grad
        assert ((p.grad - want).norm() / want.norm()).item() < 1e-5, name


CASES = {
    "plain": lambda: (inputs(), None, None),
    "jumping positions": lambda: (inputs(), jumping_positions(), None),
    "packed": lambda: (inputs(B=1), *packed()),
}


@pytest.mark.parametrize("n_kv_heads", [4, 2])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("ops", ["fast", "fast, torch ops", "fast, long rows", "plain"])
def test_logits_and_gradients_equal_transformers(case, n_kv_heads, ops, monkeypatch):
    """fast: causal rows this short run ShortAttention, with the CPU kernels where they
    built (smolforge/core/cpu_kernels.py); torch ops: the same without them; long rows:
    as if longer than SHORT (SDPA on the head-major views); plain: the ops torch.compile
    and autocast run (`llama.plain`), here in eager float32."""
    if ops == "fast, torch ops":
        monkeypatch.setattr(llama.cpu_kernels, "usable", lambda *tensors: False)
    if ops == "plain":
        monkeypatch.setattr(llama, "plain", lambda x: True)
    if ops == "fast, long rows":
        monkeypatch.setattr(llama, "SHORT", 0)
    fast, hf = pair(n_kv_heads)
    ids, pos, mask = CASES[case]()
    got = fast(input_ids=ids, position_ids=pos, attention_mask=mask).logits
    want = hf(input_ids=ids, position_ids=pos, attention_mask=mask).logits
    assert got.shape == want.shape == (*ids.shape, VOCAB)
    assert (got - want).abs().max().item() < 1e-5
    target = torch.randint(0, VOCAB, ids.shape, generator=torch.Generator().manual_seed(3))
    F.cross_entropy(got.flatten(0, 1), target.flatten()).backward()
    F.cross_entropy(want.flatten(0, 1), target.flatten()).backward()
    assert_close_grads(fast, hf)


@pytest.mark.parametrize("T", [1, 7, 96])
def test_short_attention_is_causal_sdpa(T):
    """ShortAttention (in-place softmax, its own backward) against SDPA's causal attention:
    outputs and the gradients of q, k and v."""
    g = torch.Generator().manual_seed(T)
    q, k, v, dy = (torch.randn(6, T, 16, generator=g) for _ in range(4))
    fast = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    y = llama.ShortAttention.apply(*fast)
    want = F.scaled_dot_product_attention(*ref, is_causal=True)
    assert (y - want).abs().max().item() < 1e-5
    y.backward(dy)
    want.backward(dy)
    for a, b in zip(fast, ref):
        assert (a.grad - b.grad).abs().max().item() < 1e-5


def test_swiglu_backward_runs_once():
    """SwiGLU's backward overwrites its saved input: a second backward through the same
    graph must fail loudly, never return wrong gradients."""
    h = torch.randn(4, 10, requires_grad=True)
    y = llama.SwiGLU.apply(h * 1.0).sum()  # h * 1.0: a fresh tensor, as the matmul output is
    y.backward(retain_graph=True)
    gate, up = h.detach().chunk(2, -1)
    assert torch.allclose(h.grad, torch.cat([up * torch.ops.aten.silu_backward(torch.ones_like(gate), gate),
                                             F.silu(gate)], -1), atol=1e-6)  # fmt: skip
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_the_mask_isolates_packed_examples():
    """A packed example's logits are those of the example alone (so the mask is used)."""
    fast, _ = pair()
    ids = inputs(B=1)
    pos, mask = packed()
    with torch.no_grad():
        together = fast(input_ids=ids, position_ids=pos, attention_mask=mask).logits
        alone = fast(input_ids=ids[:, 6:15]).logits
        unmasked = fast(input_ids=ids, position_ids=pos).logits
    assert (together[:, 6:15] - alone).abs().max().item() < 1e-5
    assert (unmasked[:, 6:15] - alone).abs().max().item() > 1e-3


@pytest.mark.parametrize("tie", [True, False])
def test_logits_to_keep_body_and_head(tie):
    fast, hf = pair(tie=tie)
    ids, pos = inputs(), jumping_positions()
    keep = torch.tensor([0, 3, 4, 11, 19])
    with torch.no_grad():
        full = fast(input_ids=ids, position_ids=pos).logits
        got = fast(input_ids=ids, position_ids=pos, logits_to_keep=keep).logits
        want = hf(input_ids=ids, position_ids=pos, logits_to_keep=keep).logits
        last = fast(input_ids=ids, position_ids=pos, logits_to_keep=2).logits
        h = fast.model(input_ids=ids, position_ids=pos).last_hidden_state
        h_hf = hf.model(input_ids=ids, position_ids=pos).last_hidden_state
    assert got.shape == (3, 5, VOCAB)
    assert (got - want).abs().max().item() < 1e-5
    assert (got - full[:, keep]).abs().max().item() < 1e-5
    assert (last - full[:, -2:]).abs().max().item() < 1e-5
    assert (h - h_hf).abs().max().item() < 1e-5
    assert (fast.lm_head(h) - full).abs().max().item() < 1e-5


@pytest.mark.parametrize("tie", [True, False])
def test_state_dict_is_transformers_own(tie):
    fast, hf = pair(n_kv_heads=2, tie=tie)
    assert list(fast.state_dict()) == list(hf.state_dict())
    assert (fast.lm_head.weight is fast.model.embed_tokens.weight) == tie
    assert model_lib.n_params(fast) == model_lib.n_params(hf)
    # and back: transformers' weights load into the training model
    other = model_lib.build(config(2, tie), seed=9)
    other.load_state_dict(hf.state_dict())
    ids = inputs()
    with torch.no_grad():
        assert (other(input_ids=ids).logits - hf(input_ids=ids).logits).abs().max().item() < 1e-5


def test_init_depends_only_on_the_seed_and_is_hf_like():
    a, b, c = (model_lib.build(config(), s) for s in (5, 5, 6))
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), name
        if p.dim() == 1:
            assert torch.equal(p, torch.ones_like(p)), name  # norms start at 1
        else:
            assert not torch.equal(p, r), name
    emb = a.model.embed_tokens.weight
    assert torch.equal(emb[PAD], torch.zeros_like(emb[PAD]))  # HF zeroes the padding row
    w = a.model.layers[0].mlp.up_proj.weight
    assert abs(w.std().item() - 0.2) < 0.02 and abs(w.mean().item()) < 0.02


def test_saved_folder_is_an_ordinary_transformers_model(tmp_path):
    from transformers import LlamaForCausalLM

    from smolforge.inits import scratch

    fast, _ = pair(n_kv_heads=2)
    fast.generation_config.pad_token_id = PAD  # as stage train sets it before saving
    scratch.save(fast, tmp_path)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path)
    ids, pos = inputs(), jumping_positions()
    with torch.no_grad():
        got = loaded(input_ids=ids, position_ids=pos).logits
        want = fast(input_ids=ids, position_ids=pos).logits
    assert (got - want).abs().max().item() < 1e-5
    assert loaded.generation_config.pad_token_id == PAD
    assert loaded.config.tie_word_embeddings


def test_refuses_what_it_does_not_compute_as_transformers():
    fast, _ = pair()
    with pytest.raises(ValueError, match="4D"):
        fast(input_ids=inputs(), attention_mask=torch.ones(3, 20, dtype=torch.long))
    c = config()
    c.mlp_bias = True
    with pytest.raises(ValueError, match="biases"):
        model_lib.build(c, 0)
