"""Datasets for ``astra-train``, all local (nothing is downloaded).

Image tasks (ViT, top-1 accuracy):
  * ``digits``: scikit-learn's bundled handwritten digits (1797 8×8 grey images, 10 classes), upsampled to the
    model's image size; a stratified test split.
  * ``imagefolder``: ``dataset.path`` holds one sub-directory per class with image files (PNG/JPEG/...); if it has
    ``train/`` and ``test/`` sub-directories those are the splits, otherwise a stratified split is drawn.
Text tasks (GPT2, perplexity):
  * ``pydoc``: the English help texts that ship with Python (``pydoc_data.topics``, about 460 kB), byte-level;
    the last ``test_fraction`` of the bytes is the test split.
  * ``textfiles``: ``dataset.path`` is a text file or a directory of ``*.txt`` / ``*.md`` files; tokenised byte-level
    (``tokenizer: bytes``) or with the HF tokenizer saved beside the weights (``tokenizer: hf``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
TEXT_SUFFIXES = {".txt", ".md", ".rst"}


class DataError(ValueError):
    """A dataset problem: one line naming it and the fix."""


@dataclass
class ImageData:
    train_x: torch.Tensor  # (n, C, H, W) normalised
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    classes: list[str]


@dataclass
class TextData:
    train: torch.Tensor  # 1-D token ids
    test: torch.Tensor
    vocab_size: int


def _stratified_split(y: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = max(1, round(len(idx) * test_fraction)) if len(idx) > 1 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _normalise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(), train.std().clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def digits(image_size: int, channels: int, test_fraction: float, seed: int) -> ImageData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.expand(-1, channels, -1, -1).contiguous()
    y = torch.tensor(d.target, dtype=torch.long)
    tr, te = _stratified_split(y, test_fraction, seed)
    xtr, xte = _normalise(x[tr], x[te])
    return ImageData(xtr, y[tr], xte, y[te], 10, [str(i) for i in range(10)])


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _load_images(dirs: list[Path], classes: list[str], image_size: int, channels: int):
    from PIL import Image

    xs, ys = [], []
    for d in dirs:
        label = classes.index(d.name)
        for f in sorted(d.rglob("*")):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert("L" if channels == 1 else "RGB").resize((image_size, image_size))
                    arr = torch.tensor(list(im.getdata()), dtype=torch.float32)
            except OSError as exc:
                raise DataError(f"cannot read image {f}: {exc}: remove or replace the file") from None
            xs.append(arr.view(image_size, image_size, channels).permute(2, 0, 1) / 255.0)
            ys.append(label)
    return xs, ys


def imagefolder(path: str, image_size: int, channels: int, test_fraction: float, seed: int) -> ImageData:
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"dataset.path={path} does not exist or is not a directory: "
                        "pass a folder with one sub-folder of images per class")
    split_dirs = (root / "train").is_dir() and (root / "test").is_dir()
    if split_dirs:
        classes = sorted({d.name for s in ("train", "test") for d in _class_dirs(root / s)})
        xtr, ytr = _load_images(_class_dirs(root / "train"), classes, image_size, channels)
        xte, yte = _load_images(_class_dirs(root / "test"), classes, image_size, channels)
    else:
        classes = [d.name for d in _class_dirs(root)]
        xtr, ytr = _load_images(_class_dirs(root), classes, image_size, channels)
        xte, yte = [], []
    if not xtr or (split_dirs and not xte):
        raise DataError(f"dataset.path={path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class "
                        "sub-folders: put each class's images in <path>/<class>/")
    if len(classes) < 2:
        raise DataError(f"dataset.path={path} has {len(classes)} class folder(s): an image task needs at least 2")
    x, y = torch.stack(xtr), torch.tensor(ytr)
    if split_dirs:
        xa, xb = _normalise(x, torch.stack(xte))
        return ImageData(xa, y, xb, torch.tensor(yte), len(classes), classes)
    tr, te = _stratified_split(y, test_fraction, seed)
    if len(te) == 0 or len(tr) == 0:
        raise DataError(f"dataset.path={path} has too few images to split: add images or a train/ and test/ split")
    xa, xb = _normalise(x[tr], x[te])
    return ImageData(xa, y[tr], xb, y[te], len(classes), classes)


def _split_text(ids: torch.Tensor, test_fraction: float, seq_len: int, where: str) -> TextData:
    n_test = int(len(ids) * test_fraction)
    if len(ids) - n_test < 2 * (seq_len + 1) or n_test < seq_len + 1:
        raise DataError(f"{where} has only {len(ids)} tokens, too few for train/test windows of {seq_len + 1}: "
                        "add text or lower task.tokens")
    return TextData(ids[: len(ids) - n_test].clone(), ids[len(ids) - n_test:].clone(), 256)


def pydoc_text(test_fraction: float, seq_len: int) -> TextData:
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    ids = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    return _split_text(ids, test_fraction, seq_len, "pydoc_data.topics")


def textfiles(path: str, test_fraction: float, seq_len: int, tokenizer: str = "bytes",
              tokenizer_dir: str | None = None) -> TextData:
    root = Path(path)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
    else:
        raise DataError(f"dataset.path={path} does not exist: pass a text file or a folder of .txt/.md files")
    text = "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    if not text.strip():
        raise DataError(f"dataset.path={path} holds no text ({', '.join(sorted(TEXT_SUFFIXES))} files): add some")
    if tokenizer == "hf":
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        except Exception as exc:  # noqa: BLE001 - any failure is one line for the user
            raise DataError(f"cannot load an HF tokenizer from {tokenizer_dir} ({type(exc).__name__}): "
                            "save the tokenizer beside the weights or use dataset.tokenizer=bytes") from None
        ids = torch.tensor(tok(text)["input_ids"], dtype=torch.long)
        data = _split_text(ids, test_fraction, seq_len, f"dataset.path={path}")
        data.vocab_size = len(tok)
        return data
    ids = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    return _split_text(ids, test_fraction, seq_len, f"dataset.path={path}")


def augment_shift(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``pixels`` in each direction (zero padding), one shift per image."""
    if pixels <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    dx = torch.randint(0, 2 * pixels + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * pixels + 1, (b,), generator=generator)
    return torch.stack([padded[i, :, y: y + h, x: x + w] for i, (y, x) in enumerate(zip(dy.tolist(), dx.tolist()))])


def text_windows(ids: torch.Tensor, seq_len: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """``batch`` random windows of ``seq_len + 1`` tokens -> (batch, seq_len + 1)."""
    starts = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=generator)
    return torch.stack([ids[s: s + seq_len + 1] for s in starts.tolist()])


def eval_windows(ids: torch.Tensor, seq_len: int, limit: int | None) -> torch.Tensor:
    """Non-overlapping windows of ``seq_len + 1`` tokens over ``ids`` (at most ``limit``, evenly spread)."""
    n = (len(ids) - 1) // seq_len
    starts = torch.arange(n) * seq_len
    if limit and n > limit:
        starts = starts[torch.linspace(0, n - 1, limit).long()]
    return torch.stack([ids[s: s + seq_len + 1] for s in starts.tolist()])
