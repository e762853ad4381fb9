"""ASTRA simulated in one process: the split mask M, grouped VQ with EMA codebooks, commitment loss and NAVQ noise.

This is the training (and single-process evaluation) form of the method (the paper's noise-augmented quantization). It runs the *same*
model as the distributed runtime (``harness.parallel.astra``) and reproduces what that runtime computes:

* every token is given a device: contiguous shares as in the runtime (``partition``), or, for training only, a random
  token-to-device assignment with random (uneven) share sizes;
* per block, the attention input ``x = ln1(h)`` of every token is quantized with the block's grouped codebooks
  (nearest codeword per group, exactly ``vq.encode``); a query attends to keys of its own device in full precision
  and to keys of other devices through K̂/V̂ projected from the quantized vectors (Eq. 1: the mask M picks, per
  query/key pair, the full-precision or the quantized score and value);
* ViT with Distributed Class Tokens: one class-token replica per device, each seeing only its own device's tokens
  in full precision and never the other replicas (they are never sent); the final replicas are mean-pooled before
  the head. Without DCT the class token is an ordinary token of device 0;
* GPT2: causal mask on global positions; a token's full-precision keys are those of its own device.

Training-only parts (never used at evaluation, never in the runtime):

* straight-through estimator: the quantized vector enters the forward pass, its gradient flows to ``x`` unchanged;
* commitment loss ``Σ_blocks mean_tokens ‖x − sg(x̂)‖²`` (Eq. 2) over the tokens that are sent;
* EMA codebooks (VQ-VAE style, decay γ): per group, counts and sums of the vectors assigned to each codeword;
  ``codeword = sum / count``; sum and count decay together, so codewords never assigned keep their position;
* NAVQ: ``x̃ = x̂ + λ ξ``, ``ξ ~ N(μ, Σ)``. μ and Σ are kept **per block and per group** (Σ is a full d×d
  covariance of the group's sub-vector, or only its diagonal with ``noise_cov=diag``), initialised from the
  calibration residuals ``ε = x − x̂`` and then tracked as running moments of the residuals with the same decay as
  the codebooks, so the noise follows the codebooks as they move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.models import Transformer
from harness.parallel import vq
from harness.parallel.base import partition


@dataclass
class SimOptions:
    devices: int = 4
    dct: bool = True
    noise_lambda: float = 1.0
    noise_cov: str = "full"  # full | diag
    commitment_beta: float = 5e-4
    ema_decay: float = 0.99
    split: str = "contiguous"  # contiguous | random (training only)
    index_loss: float = 0.0  # evaluation: fraction of remote tokens' indices lost in transit (vq.lost_tokens)
    index_loss_fill: str = "mask"  # mask | zero: what a receiver makes of a lost token (as the runtime)


class VQState(nn.Module):
    """Per-block grouped codebooks (L, G, K, d) plus the EMA and residual statistics used in training."""

    def __init__(self, codebooks: torch.Tensor, resid_mean: torch.Tensor | None = None,
                 resid_cov: torch.Tensor | None = None):
        super().__init__()
        layers, g, k, d = codebooks.shape
        self.register_buffer("codebooks", codebooks.float().clone())
        self.register_buffer("ema_count", torch.ones(layers, g, k))
        self.register_buffer("ema_sum", codebooks.float().clone())
        self.register_buffer("resid_mean", resid_mean.float().clone() if resid_mean is not None
                             else torch.zeros(layers, g, d))
        self.register_buffer("resid_cov", resid_cov.float().clone() if resid_cov is not None
                             else torch.zeros(layers, g, d, d))

    @property
    def groups(self) -> int:
        return self.codebooks.shape[1]

    @property
    def codebook_size(self) -> int:
        return self.codebooks.shape[2]

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """x (n, D) -> indices (n, G), the same nearest-codeword rule as the runtime."""
        return vq.encode(x, self.codebooks[layer])

    def decode(self, layer: int, idx: torch.Tensor) -> torch.Tensor:
        return vq.decode(idx, self.codebooks[layer])

    @torch.no_grad()
    def ema_update(self, layer: int, x: torch.Tensor, idx: torch.Tensor, decay: float) -> None:
        """One EMA step of layer ``layer``'s codebooks from vectors ``x`` (n, D) assigned to ``idx`` (n, G)."""
        _, g, k, d = self.codebooks.shape
        n = x.shape[0]
        flat = (idx + torch.arange(g) * k).reshape(-1)  # (n*G,) codeword ids across groups
        counts = torch.bincount(flat, minlength=g * k).float().view(g, k)
        sums = torch.zeros(g * k, d).index_add_(0, flat, x.reshape(n * g, d).float()).view(g, k, d)
        cnt = self.ema_count[layer].mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_sum[layer].mul_(decay).add_(sums, alpha=1 - decay)
        # sum and count decay together, so a codeword that gets no vectors keeps its position
        live = cnt > 1e-20
        new = self.ema_sum[layer] / cnt.clamp_min(1e-20).unsqueeze(-1)
        self.codebooks[layer] = torch.where(live.unsqueeze(-1), new, self.codebooks[layer])

    @torch.no_grad()
    def residual_update(self, layer: int, resid: torch.Tensor, decay: float) -> None:
        """Running mean and covariance of the residuals (n, D), per group."""
        mean, cov = _group_mean_cov(resid.float(), self.groups)
        self.resid_mean[layer].mul_(decay).add_(mean, alpha=1 - decay)
        self.resid_cov[layer].mul_(decay).add_(cov, alpha=1 - decay)

    def sample_noise(self, layer: int, n: int, cov: str, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws of ξ ~ N(μ, Σ) per group -> (n, D)."""
        g, d = self.groups, self.codebooks.shape[-1]
        z = torch.randn(n, g, d, generator=generator)
        mu, sigma = self.resid_mean[layer], self.resid_cov[layer]
        if cov == "diag":
            xi = z * torch.diagonal(sigma, dim1=-2, dim2=-1).clamp_min(0).sqrt()
        else:
            jitter = 1e-6 * torch.diagonal(sigma, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
            chol, info = torch.linalg.cholesky_ex(sigma + jitter[:, None, None] * torch.eye(d))
            if bool((info != 0).any()):  # not positive definite: symmetric square root, eigenvalues clamped at 0
                w, v = torch.linalg.eigh(sigma)
                chol = v @ torch.diag_embed(w.clamp_min(0).sqrt()) @ v.transpose(-2, -1)
            xi = torch.einsum("gij,ngj->ngi", chol, z)
        return (xi + mu).reshape(n, g * d)


def _group_mean_cov(r: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean (G, d) and sample covariance (G, d, d) of the rows of ``r`` (n, G·d)."""
    r = r.reshape(r.shape[0], groups, -1)
    mean = r.mean(0)
    cov = torch.einsum("ngi,ngj->gij", r - mean, r - mean) / max(r.shape[0] - 1, 1)
    return mean, cov


def residual_stats(x: torch.Tensor, books: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (G, d) and covariance (G, d, d) of the quantization residuals of ``x`` (n, D)."""
    r = x - vq.decode(vq.encode(x, books), books)
    mean, cov = _group_mean_cov(r.double(), books.shape[0])
    return mean.float(), cov.float()


def assign_devices(content: int, devices: int, dct: bool, vit: bool, random: bool, batch: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Device of every sequence position, (batch, S).

    Sequence layout: ViT with DCT: ``devices`` class-token replicas (replica r on device r), then the content tokens;
    ViT without DCT: the class token, then the content tokens (the class token is position 0 of device 0, as in the
    runtime); GPT2: the content tokens. ``random``: every sample gets random share sizes (each >= 1, drawn from a
    flat Dirichlet) and a random permutation of positions to devices.
    """
    partitioned = content + (1 if vit and not dct else 0)
    if not random:
        dev = torch.empty(partitioned, dtype=torch.long)
        for r, (s, e) in enumerate(partition(partitioned, devices)):
            dev[s:e] = r
        dev = dev.expand(batch, -1)
    else:
        rows = []
        for _ in range(batch):
            w = -torch.log(torch.rand(devices, generator=generator))  # normalised: a flat Dirichlet draw
            w = w / w.sum()
            sizes = torch.ones(devices, dtype=torch.long) + torch.floor(w * (partitioned - devices)).long()
            sizes[torch.argmax(w)] += partitioned - int(sizes.sum())
            dev = torch.repeat_interleave(torch.arange(devices), sizes)
            rows.append(dev[torch.randperm(partitioned, generator=generator)])
        dev = torch.stack(rows)
    if vit and dct:
        dev = torch.cat([torch.arange(devices).expand(batch, -1), dev], 1)
    return dev


def fpar(dev: torch.Tensor, devices: int) -> torch.Tensor:
    """Full-precision attention rate Σ n_k² / T² per sample (paper App. D), over the content tokens."""
    counts = F.one_hot(dev, devices).sum(1).float()
    return counts.pow(2).sum(-1) / dev.shape[1] ** 2


class AstraSim:
    """Runs ``model`` as ASTRA on ``devices`` simulated devices (see the module docstring)."""

    def __init__(self, model: Transformer, state: VQState, opts: SimOptions):
        self.model, self.state, self.opts = model, state, opts
        self.cfg = model.cfg
        self.vit = self.cfg.kind == "vit"
        self.lossless = False
        self.generator: torch.Generator | None = None
        self.loss_seed = 0  # the runtime's ``seed``: which indices ``index_loss`` loses

    # -- masks ----------------------------------------------------------------------------------------------------
    def masks(self, dev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(same, allowed, sent) for device map ``dev`` (B, S): same-device pairs (full precision), pairs that may
        attend at all, and the positions whose quantized form is sent to other devices."""
        b, s = dev.shape
        same = dev[:, :, None] == dev[:, None, :]
        allowed = torch.ones(b, s, s, dtype=torch.bool)
        sent = torch.ones(b, s, dtype=torch.bool)
        if self.vit and self.opts.dct:
            n = self.opts.devices
            allowed[:, :, :n] = same[:, :, :n]  # a class-token replica is seen only on its own device
            sent[:, :n] = False  # replicas are never sent
        if self.cfg.causal:
            allowed &= torch.ones(s, s, dtype=torch.bool).tril()
        return same[:, None], allowed[:, None], sent

    def lost_pairs(self, layer: int, dev: torch.Tensor, sent: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, S, S): query/key pairs whose key's indices never reached the query's device in block ``layer``,
        drawn exactly as the runtime draws them (``vq.lost_tokens`` per sender and receiver, a sender's sent tokens
        numbered in sequence order); None without loss."""
        p = self.opts.index_loss
        if not p or self.lossless:
            return None
        b, s = dev.shape
        out = torch.zeros(b, s, s, dtype=torch.bool)
        for j in range(self.opts.devices):
            from_j = (dev == j) & sent
            if not from_j.any():
                continue
            order = (from_j.long().cumsum(1) - 1).clamp_min(0)  # each sent token's place in j's share
            width = int(from_j.sum(1).max())
            for r in range(self.opts.devices):
                if r == j:
                    continue
                draw = vq.lost_tokens(self.loss_seed, layer, j, r, b, width, p)
                lost_k = draw.gather(1, order.clamp_max(width - 1)) & from_j
                out |= (dev == r)[:, :, None] & lost_k[:, None, :]
        return out[:, None]

    # -- embedding / head -------------------------------------------------------------------------------------------
    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        m, b, t = self.model, inputs.shape[0], inputs.shape[1]
        pos = torch.arange(t)
        if not self.vit:
            return m.embed_tokens(inputs, pos)
        cls = m.embed_cls(b)
        if self.opts.dct:
            cls = cls.expand(b, self.opts.devices, -1)
        return torch.cat([cls, m.embed_tokens(inputs, pos)], 1)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        if not self.vit:
            return self.model.logits(h)
        if self.opts.dct:
            return self.model.logits(h[:, : self.opts.devices].mean(1))
        return self.model.logits(h[:, 0])

    # -- one forward ------------------------------------------------------------------------------------------------
    def forward(self, inputs: torch.Tensor, dev: torch.Tensor | None = None, train: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (ViT: (B, classes); GPT2: (B, T, vocab)) and the commitment term (0 unless ``train``)."""
        b, t = inputs.shape[0], inputs.shape[1]
        if dev is None:
            dev = assign_devices(t, self.opts.devices, self.opts.dct, self.vit,
                                 train and self.opts.split == "random", b, self.generator)
        same, allowed, sent = self.masks(dev)
        h = self.embed(inputs)
        commit = h.new_zeros(())
        for i, blk in enumerate(self.model.blocks):
            x = blk.ln1(h)
            xq, c = self.quantize(i, x, sent, train)
            commit = commit + c
            h = h + self.attention(blk.attn, x, xq, same, allowed, self.lost_pairs(i, dev, sent))
            h = h + blk.mlp(blk.ln2(h))
        return self.head(self.model.ln_f(h)), commit

    def quantize(self, layer: int, x: torch.Tensor, sent: torch.Tensor, train: bool):
        """The form of ``x`` other devices see, and the commitment term. Training: straight-through + noise."""
        if self.lossless:
            return x, x.new_zeros(())
        b, s, d = x.shape
        flat = x.reshape(-1, d)
        with torch.no_grad():
            idx = self.state.encode(layer, flat.detach())
            xhat = self.state.decode(layer, idx)
        if not train:
            return xhat.view(b, s, d), x.new_zeros(())
        keep = sent.reshape(-1)
        xs = flat[keep]
        commit = (xs - xhat[keep]).pow(2).sum(-1).mean()
        target = xhat
        o = self.opts
        if o.noise_lambda > 0:
            target = xhat + o.noise_lambda * self.state.sample_noise(layer, flat.shape[0], o.noise_cov, self.generator)
        with torch.no_grad():
            self.state.residual_update(layer, xs.detach() - xhat[keep], o.ema_decay)
            self.state.ema_update(layer, xs.detach(), idx[keep], o.ema_decay)
        xq = flat + (target - flat).detach()  # straight-through
        return xq.view(b, s, d), commit

    def attention(self, attn, x, xq, same, allowed, lost=None) -> torch.Tensor:
        """Eq. 1's masked attention. ``lost`` (B, 1, S, S): pairs whose key never arrived — left out (fill
        ``mask``) or attended as a zero vector (``zero``: key and value are the projections' biases)."""
        pos = torch.arange(x.shape[1])  # rotary models: every key rotated at its own position, remote ones too
        q, k, v = attn.project(x, pos)
        w, bias = attn.kv_weights()
        kq, vq_ = F.linear(xq, w, bias).chunk(2, dim=-1)
        q = attn.split_heads(q)
        hq = q.shape[1]
        k, v, kq, vq_ = (attn.expand_kv(attn.split_heads(t), hq) for t in (k, v, attn.rotate(kq, pos), vq_))
        scale = 1.0 / math.sqrt(attn.head_dim)
        s_full = (q @ k.transpose(-2, -1)) * scale
        s_q = (q @ kq.transpose(-2, -1)) * scale
        zero_fill = lost is not None and self.opts.index_loss_fill == "zero"
        if zero_fill:  # a zero vector's key is the key bias (or zero): one score per query and head
            bias = bias if bias is not None else w.new_zeros(w.shape[0])
            k_bias, v_bias = (attn.expand_kv(attn.split_heads(t.view(1, 1, -1)), hq) for t in bias.chunk(2))
            s_q = torch.where(lost, (q * k_bias).sum(-1, keepdim=True) * scale, s_q)
        elif lost is not None:
            allowed = allowed & ~lost
        scores = torch.where(same, s_full, s_q).masked_fill(~allowed, float("-inf"))
        p = torch.softmax(scores, dim=-1)
        zero = p.new_zeros(())
        remote = ~same if not zero_fill else ~same & ~lost
        o = torch.where(same, p, zero) @ v + torch.where(remote, p, zero) @ vq_
        if zero_fill:
            o = o + torch.where(lost, p, zero).sum(-1, keepdim=True) * v_bias
        bsz, h, n, hd = o.shape
        return attn.proj(o.transpose(1, 2).reshape(bsz, n, h * hd))
