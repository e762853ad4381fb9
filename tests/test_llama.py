"""The Llama family (RMSNorm, rotary positions, grouped-query attention, SwiGLU): the model's pieces, the configs,
and what the methods do with it beyond the exactness tests every method runs on ``llama`` (test_parallel,
test_overlap, test_bp): remote keys rotated at their own global positions, ASTRA's K|V table on grouped-query
attention, tensor parallelism sharing a key/value head between ranks."""

import pytest
import torch
from threadcomm import max_err, run_method

from harness.errors import ConfigError
from harness.models import build_model, make_inputs
from harness.models.transformer import Attention


def test_rotary_attention_depends_on_relative_positions_only(tiny_cfg):
    """q·k after rotation depends on the positions' difference: shifting every position leaves the scores."""
    cfg = tiny_cfg("llama", 8)
    attn = Attention(cfg)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 5, attn.q_size, generator=g), torch.randn(1, 5, attn.q_size, generator=g)
    pos = torch.arange(5)
    a = attn.rotate(q, pos) @ attn.rotate(k, pos).transpose(1, 2)
    b = attn.rotate(q, pos + 37) @ attn.rotate(k, pos + 37).transpose(1, 2)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert (attn.rotate(q, pos + 1) - attn.rotate(q, pos)).abs().max() > 1e-3  # it does rotate


def test_grouped_query_heads_read_their_group(tiny_cfg):
    """8 query heads over 2 key/value heads: heads 0-3 read k/v head 0, heads 4-7 head 1."""
    cfg = tiny_cfg("llama", 4, heads=8, hidden=64, kv_heads=2)
    attn = Attention(cfg)
    kv = torch.arange(2.0).view(1, 2, 1, 1).expand(1, 2, 3, 8)
    assert attn.expand_kv(kv, 8)[0, :, 0, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert attn.kv_size == 2 * 8 and attn.qkv.out_features == 64 + 2 * 16


@pytest.mark.parametrize("world", [3, 4])
def test_tp_shares_a_key_value_head_between_ranks(tiny_cfg, world):
    """4 query heads over 2 key/value heads on 3 ranks (2, 1, 1 heads): ranks 1 and 2 both keep k/v head 1."""
    from harness.parallel.tp import head_shard

    cfg = tiny_cfg("llama", 9, heads=4, hidden=32)
    shards = [head_shard(cfg, world, r) for r in range(world)]
    hd = cfg.head_dim
    assert sum(s.q_size for s in shards) == cfg.heads * hd
    if world == 3:
        assert [s.kv_size // hd for s in shards] == [1, 1, 1] and [s.kv_index.tolist() for s in shards] == [
            [0, 0], [0], [0]]
        assert shards[1].qkv_rows[1] == shards[2].qkv_rows[1]  # the same key head's rows on both
    model = build_model(cfg, seed=3)
    x = make_inputs(cfg, 9, batch=2, seed=3)
    assert max_err(run_method(model, x, "tp", world), model(x, all_positions=True)) <= 1e-4


def perfect_codebooks(model, x, k):
    """Per block a codebook holding every attention input of ``x`` (and far-away fillers): every token quantizes
    to itself, so ASTRA must equal the single device exactly — through its K|V table, with rotary keys."""
    from harness.parallel.codebooks import attention_inputs_to

    acts = [None] * len(model.blocks)
    with attention_inputs_to(model, lambda i, a: acts.__setitem__(i, a)):
        model(x)
    books = []
    for a in acts:
        filler = 1e3 + torch.arange(k - a.shape[0], dtype=torch.float32)[:, None].expand(-1, a.shape[1])
        books.append(torch.cat([a, filler])[None])
    return torch.stack(books)  # (layers, 1, K, hidden)


@pytest.mark.parametrize("kv_table", [True, False])
def test_astra_forms_rotated_remote_keys_from_indices(tiny_cfg, kv_table):
    cfg = tiny_cfg("llama", 13, heads=8, hidden=64)
    model = build_model(cfg, seed=2)
    x = make_inputs(cfg, 13, seed=2)
    books = perfect_codebooks(model, x, 16)
    res = run_method(model, x, "astra", 3, {"groups": 1, "codebook_size": 16, "codebooks": books,
                                            "kv_table": kv_table})
    assert (res[0][1].tables is not None) == kv_table
    assert max_err(res, model(x, all_positions=True)) <= 1e-4
    # what crossed the wire: 4-bit indices of the largest shard (5 tokens), one message per block
    assert [r.payload_bytes for r in res[0][2]] == [3, 3]


def test_astra_kv_table_is_grouped_query_sized(tiny_cfg):
    """The K|V table holds K codewords' keys and values of the key/value heads only: (G, K, 2 x kv width)."""
    cfg = tiny_cfg("llama", 8, heads=8, hidden=64, kv_heads=2)
    model = build_model(cfg, seed=1)
    books = torch.randn(cfg.layers, 2, 32, 32)
    res = run_method(model, make_inputs(cfg, 8), "astra", 2, {"groups": 2, "codebook_size": 32, "codebooks": books})
    assert tuple(res[0][1].tables[0].shape) == (2, 32, 2 * 2 * 8)


def test_llama_configs_and_checks():
    import yaml

    from harness.spec.build import model_config

    def load(name, tokens=16, **kw):
        return model_config({**yaml.safe_load(open(f"conf/model/{name}.yaml")), **kw}, tokens)

    big = load("llama3_8b", 1024)
    assert (big.layers, big.hidden, big.heads, big.n_kv_heads, big.inner) == (32, 4096, 32, 8, 14336)
    block = 2 * big.hidden + big.hidden * (big.hidden + 2 * 8 * 128) + big.hidden ** 2 + 3 * big.hidden * big.inner
    total = block * big.layers + 2 * big.vocab_size * big.hidden + big.hidden
    assert 8.0e9 < total < 8.1e9  # Llama-3-8B's 8.03 B parameters
    assert load("llama_1b").tie_embeddings and load("llama_tiny").n_kv_heads == 2
    with pytest.raises(ConfigError, match="kv_heads=3 must divide"):
        load("llama_tiny", kv_heads=3)
    with pytest.raises(ConfigError, match="odd"):
        load("llama_tiny", hidden=40, heads=8, kv_heads=2)
    with pytest.raises(ConfigError, match="exceeds"):
        load("llama_tiny", 4096)
