"""HF checkpoint import: tiny random HF models must give the same logits through our ViT / GPT2."""

import json

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from harness.models.hf import WeightLoadError, config_from_hf, load_hf_weights  # noqa: E402
from harness.models.transformer import ModelConfig, build_model  # noqa: E402


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values everywhere (LayerNorm gains and all biases too), so no mapping error can hide behind 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * noise if "norm" in name or "ln_" in name else 0.1 * noise)


def tiny_vit():
    cfg = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=16,
        patch_size=4, num_labels=5, attn_implementation="eager",
    )  # fmt: skip
    model = transformers.ViTForImageClassification(cfg)
    randomize(model, seed=1)
    return model.eval()


def tiny_gpt2():
    cfg = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=40, attn_implementation="eager"
    )
    model = transformers.GPT2LMHeadModel(cfg)
    randomize(model, seed=2)
    return model.eval()


FORMATS = ["safetensors", "bin", "bin_disk_names"]


def save(model, path, fmt: str) -> None:
    """``bin``: torch.save of the in-memory state_dict; ``bin_disk_names``: a .bin with the names HF writes to disk."""
    if fmt == "bin":
        path.mkdir(parents=True, exist_ok=True)
        model.config.to_json_file(path / "config.json")
        torch.save(model.state_dict(), path / "pytorch_model.bin")
        return
    model.save_pretrained(path)
    assert (path / "model.safetensors").is_file()
    if fmt == "bin_disk_names":
        torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
        (path / "model.safetensors").unlink()


def assert_same_decoder_logits(hf, cfg, seed: int) -> None:
    """Our model built from ``cfg`` gives the HF decoder's logits on random ids (2 × 40)."""
    ours = build_model(cfg)
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = hf(input_ids=ids).logits
        got = ours(ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_vit_logits_match(tmp_path, fmt):
    hf = tiny_vit()
    save(hf, tmp_path, fmt)
    cfg = config_from_hf(tmp_path)
    assert (cfg.kind, cfg.hidden, cfg.layers, cfg.heads, cfg.mlp_ratio) == ("vit", 32, 2, 4, 4)
    assert (cfg.tokens, cfg.num_classes, cfg.patch_size, cfg.ln_eps) == (16, 5, 4, 1e-12)
    ours = build_model(cfg)
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = hf(pixel_values=pixels).logits
        got = ours(ours.patchify(pixels))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gpt2_logits_match(tmp_path, fmt):
    hf = tiny_gpt2()
    save(hf, tmp_path, fmt)
    cfg = config_from_hf(tmp_path)
    assert (cfg.kind, cfg.hidden, cfg.layers, cfg.heads, cfg.mlp_ratio) == ("gpt2", 32, 2, 4, 4)
    assert (cfg.vocab_size, cfg.max_positions, cfg.tokens, cfg.ln_eps) == (97, 40, 40, 1e-5)
    assert_same_decoder_logits(hf, cfg, seed=4)


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(WeightLoadError, match="does not exist: pass model.weights="):
        config_from_hf(missing)
    with pytest.raises(WeightLoadError, match="does not exist"):
        build_model(ModelConfig(kind="gpt2", layers=1, hidden=32, heads=4, weights=str(missing)))


def test_missing_weight_file(tmp_path):
    tiny_gpt2().config.to_json_file(tmp_path / "config.json")
    with pytest.raises(WeightLoadError, match="no model.safetensors or pytorch_model.bin"):
        build_model(config_from_hf(tmp_path))


@pytest.mark.parametrize("make", [tiny_vit, tiny_gpt2])
def test_shape_mismatch_names_tensor(tmp_path, make):
    save(make(), tmp_path, "safetensors")
    cfg = config_from_hf(tmp_path)
    cfg.hidden = 64
    from harness.models.transformer import GPT2, ViT

    model = (ViT if cfg.kind == "vit" else GPT2)(cfg)
    with pytest.raises(WeightLoadError, match=r"tensor \S+ in .* has shape \(.*32.*\) but the model's \S+ has shape"):
        load_hf_weights(model, tmp_path)


def test_position_table_mismatch(tmp_path):
    save(tiny_vit(), tmp_path, "safetensors")
    with pytest.raises(WeightLoadError, match="position_embeddings.*use tokens=16"):
        build_model(config_from_hf(tmp_path, tokens=64))
    save(tiny_gpt2(), tmp_path / "gpt2", "safetensors")
    with pytest.raises(WeightLoadError, match="tokens=64 exceeds the checkpoint's n_positions=40; use tokens<=40"):
        build_model(config_from_hf(tmp_path / "gpt2", tokens=64))
    assert build_model(config_from_hf(tmp_path / "gpt2", tokens=16)).wpe.weight.shape == (40, 32)


def test_missing_tensor_and_bad_config(tmp_path):
    hf = tiny_gpt2()
    save(hf, tmp_path, "bin")
    sd = hf.state_dict()
    del sd["transformer.h.1.mlp.c_fc.bias"]
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightLoadError, match="'h.1.mlp.c_fc.bias' missing"):
        build_model(config_from_hf(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "activation_function": "relu"}))
    with pytest.raises(WeightLoadError, match="activation_function='relu' is not supported"):
        config_from_hf(tmp_path)


def tiny_llama(kind: str = "llama", tied: bool = False, rope_scaling: dict | None = None, seed: int = 4):
    """A Llama-layout causal LM with grouped-query attention (8 query heads over 2 key/value heads)."""
    common = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 88, "num_hidden_layers": 2,
              "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
              "rope_theta": 500.0, "tie_word_embeddings": tied, "attn_implementation": "eager"}
    if kind == "llama":
        cfg = transformers.LlamaConfig(**common, rope_scaling=rope_scaling)
        model = transformers.LlamaForCausalLM(cfg)
    elif kind == "mistral":
        cfg = transformers.MistralConfig(**common, sliding_window=48)
        model = transformers.MistralForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**common)
        model = transformers.Qwen2ForCausalLM(cfg)
    randomize(model, seed=seed)
    return model.eval()


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}


@pytest.mark.parametrize("kind,tied,rope", [("llama", False, None), ("llama", True, LLAMA3_ROPE),
                                            ("mistral", False, None), ("qwen2", True, None)])
def test_llama_logits_match(tmp_path, kind, tied, rope):
    hf = tiny_llama(kind, tied, rope)
    save(hf, tmp_path, "safetensors")
    cfg = config_from_hf(tmp_path, tokens=40)
    assert (cfg.kind, cfg.hidden, cfg.layers, cfg.heads, cfg.n_kv_heads, cfg.inner) == ("llama", 32, 2, 8, 2, 88)
    assert (cfg.tie_embeddings, cfg.qkv_bias, cfg.rope_theta) == (tied, kind == "qwen2", 500.0)
    assert cfg.max_positions == (48 if kind == "mistral" else 64)  # mistral: its sliding window
    assert_same_decoder_logits(hf, cfg, seed=5)


def test_llama_rope_scaling_matters(tmp_path):
    """The llama3 frequency rescaling is applied: the same weights without it give other logits."""
    hf = tiny_llama("llama", False, LLAMA3_ROPE)
    save(hf, tmp_path, "safetensors")
    cfg = config_from_hf(tmp_path, tokens=40)
    plain = build_model(ModelConfig(**{**cfg.to_dict(), "rope_scaling": None}))
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert (plain(ids) - hf(input_ids=ids).logits).abs().max() > 1e-3


def test_llama_unsupported_rope_is_one_line(tmp_path):
    hf = tiny_llama("llama", False, {"rope_type": "dynamic", "factor": 2.0})
    save(hf, tmp_path, "safetensors")
    with pytest.raises(WeightLoadError, match="rope type 'dynamic' is not supported"):
        config_from_hf(tmp_path)


def test_llama_missing_head_names_tensor(tmp_path):
    hf = tiny_llama("llama", True)
    save(hf, tmp_path, "safetensors")
    cfg = config_from_hf(tmp_path, tokens=8)
    untied = ModelConfig(**{**cfg.to_dict(), "tie_embeddings": False})
    with pytest.raises(WeightLoadError, match="lm_head.weight"):
        build_model(untied)
