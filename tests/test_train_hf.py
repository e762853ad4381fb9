"""``astra-train`` on HF-layout weights from a local directory and a local dataset (image folder / text files),
with tiny models and data the test creates (nothing is downloaded)."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_cli import assert_one_line_error, run, store, value

transformers = pytest.importorskip("transformers")
from PIL import Image


def image_folder(root, classes=3, per_class=12, size=8):
    """Class c: a bright square in quadrant c (plus noise) — learnable, so the pipeline has signal."""
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = torch.rand(size, size, 3, generator=g) * 60
            r, q = divmod(c, 2)
            img[r * size // 2:(r + 1) * size // 2, q * size // 2:(q + 1) * size // 2] += 180
            Image.fromarray(img.clamp(0, 255).byte().numpy()).save(d / f"{i}.png")


@pytest.mark.slow
def test_hf_vit_on_image_folder(tmp_path):
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                 image_size=8, patch_size=2, num_labels=5)
    transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    image_folder(tmp_path / "images")
    common = ["task=imagefolder", f"task.path={tmp_path}/images", f"task.weights={tmp_path}/vit", "task.image_size=8",
              "task.base.steps=30", "task.finetune.steps=4", "astra.codebook_size=16", "astra.devices=2",
              f"out_dir={tmp_path}/out", f"results_path={tmp_path}/acc.parquet"]
    p = run(common, tmp_path / "cwd")
    assert p.returncode == 0, p.stderr[-4000:]
    df = store(tmp_path / "acc.parquet")
    assert value(df, "runtime_agreement", method="astra") == 1.0
    man = json.loads((tmp_path / "out" / "runs" / "G1-K16-N2-lam1-beta0.0005-dct-contiguous" / "manifest.json")
                     .read_text())
    # the HF model had 5 labels; the folder has 3 classes, so the head was replaced
    assert man["model"]["num_classes"] == 3 and man["model"]["hidden"] == 32 and man["model"]["weights"] is None
    # a non-multiple image size is refused before anything is trained
    bad = run([*common[:3], "task.image_size=9", f"out_dir={tmp_path}/out2", f"results_path={tmp_path}/x.parquet"],
              tmp_path / "cwd")
    assert_one_line_error(bad, 2, "not a multiple of the patch size 2")
    assert not (tmp_path / "out2").exists()


@pytest.mark.slow
def test_hf_gpt2_on_text_files(tmp_path):
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=300, n_positions=48)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    (tmp_path / "text" / "b.md").write_text("pack my box with five dozen liquor jugs. " * 200)
    common = ["task=textfiles", f"task.path={tmp_path}/text", f"task.weights={tmp_path}/gpt2", "task.tokens=32",
              "task.base.steps=30", "task.finetune.steps=4", "astra.codebook_size=16", "astra.devices=2",
              f"out_dir={tmp_path}/out", f"results_path={tmp_path}/acc.parquet"]
    p = run(common, tmp_path / "cwd")
    assert p.returncode == 0, p.stderr[-4000:]
    df = store(tmp_path / "acc.parquet")
    assert value(df, "runtime_agreement", method="astra") == 1.0
    assert value(df, "ppl", method="full") < 300  # it learned beyond uniform over the vocabulary
    bad = run([*common[:3], "task.tokens=64", f"out_dir={tmp_path}/out2", f"results_path={tmp_path}/x.parquet"],
              tmp_path / "cwd")
    assert_one_line_error(bad, 2, "exceeds the model's 48 positions")
