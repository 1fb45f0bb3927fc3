"""Residual vector quantization with EMA codebooks and dead-code restarts (SoundStream / EnCodec style).

Codebook 0 quantizes the encoder's latent; codebook k quantizes what codebooks 0..k-1 left over,
so the first codebook carries the coarse content and later ones refine it. Codebooks are not
trained by gradients: each keeps an exponential moving average of how many latents picked each
code and of their sum, and the code vector is their ratio (online k-means). A code whose usage
average falls below a threshold is "dead" and is restarted on a random latent of the current
batch, so no codebook collapses onto a few entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # [B, D, T], straight-through: gradients flow to the encoder unchanged
    codes: torch.LongTensor  # [B, K, T]
    commitment_loss: torch.Tensor  # scalar, mean squared distance of latents to their codes


class EMAVectorQuantizer(nn.Module):
    def __init__(self, dim: int, codebook_size: int, decay: float = 0.99, dead_fraction: float = 0.1, epsilon: float = 1e-5):
        super().__init__()
        self.codebook_size = codebook_size
        self.decay = decay
        # A code is dead when its EMA pick count falls below this fraction of a uniform share of the batch.
        self.dead_fraction = dead_fraction
        self.epsilon = epsilon
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("codebook", torch.randn(codebook_size, dim) * 0.1)
        self.register_buffer("cluster_size", torch.zeros(codebook_size))  # EMA of picks per code
        self.register_buffer("embed_sum", self.codebook.clone())  # EMA of the sum of latents per code

    def nearest(self, latents: torch.Tensor) -> torch.LongTensor:
        """latents [N, D] -> index of the closest code [N]."""
        distances = (
            latents.pow(2).sum(1, keepdim=True) - 2 * latents @ self.codebook.t() + self.codebook.pow(2).sum(1)[None]
        )
        return distances.argmin(dim=1)

    def lookup(self, codes: torch.LongTensor) -> torch.Tensor:
        return F.embedding(codes, self.codebook)

    def dead_threshold(self, batch_latents: int) -> float:
        return self.dead_fraction * batch_latents / self.codebook_size

    @torch.no_grad()
    def _initialize(self, latents: torch.Tensor) -> None:
        # Start from random latents of the first batch: codes begin where the data is.
        self.codebook.copy_(_sample_rows(latents, self.codebook_size))
        # Every code starts at the dead threshold: those the next batch leaves unused are restarted at once.
        threshold = self.dead_threshold(latents.shape[0])
        self.cluster_size.fill_(threshold)
        self.embed_sum.copy_(self.codebook * threshold)
        self.initialized.fill_(True)

    @torch.no_grad()
    def update(self, latents: torch.Tensor, codes: torch.LongTensor) -> None:
        """One EMA step of the codebook towards the latents [N, D] assigned to it, then restart dead codes."""
        one_hot = F.one_hot(codes, self.codebook_size).type(latents.dtype)  # [N, C]
        self.cluster_size.mul_(self.decay).add_(one_hot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(one_hot.t() @ latents, alpha=1 - self.decay)
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
        self.codebook.copy_(self.embed_sum / smoothed[:, None])
        self.restart_dead_codes(latents)

    @torch.no_grad()
    def restart_dead_codes(self, latents: torch.Tensor) -> int:
        """Move every dead code onto a random latent of the batch [N, D]; returns how many were restarted."""
        threshold = self.dead_threshold(latents.shape[0])
        dead = self.cluster_size < threshold
        count = int(dead.sum())
        if count:
            fresh = _sample_rows(latents, count)
            self.codebook[dead] = fresh
            self.embed_sum[dead] = fresh * threshold
            self.cluster_size[dead] = threshold
        return count

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.LongTensor]:
        """latents [N, D] -> (quantized [N, D], codes [N]); updates the codebook in training mode."""
        if self.training and not bool(self.initialized):
            self._initialize(latents.detach())
        codes = self.nearest(latents.detach())
        quantized = self.lookup(codes)  # the codes as they were when picked, before this step's update
        if self.training:
            self.update(latents.detach(), codes)
        return quantized, codes


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, dim: int, num_codebooks: int, codebook_size: int, decay: float = 0.99, dead_fraction: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(
            EMAVectorQuantizer(dim, codebook_size, decay, dead_fraction) for _ in range(num_codebooks)
        )

    def forward(self, latents: torch.Tensor, num_codebooks: int | None = None) -> QuantizerOutput:
        """latents [B, D, T] -> quantized with the first `num_codebooks` codebooks (all by default)."""
        batch, dim, frames = latents.shape
        flat = latents.permute(0, 2, 1).reshape(-1, dim)
        residual = flat
        quantized = torch.zeros_like(flat)
        codes = []
        for layer in self.layers[: num_codebooks or len(self.layers)]:
            q, c = layer(residual)
            residual = residual - q.detach()
            quantized = quantized + q
            codes.append(c)
        commitment = F.mse_loss(flat, quantized.detach())
        # Straight-through estimator: the forward pass uses the codes, the backward pass skips them.
        quantized = flat + (quantized - flat).detach()
        return QuantizerOutput(
            quantized.reshape(batch, frames, dim).permute(0, 2, 1),
            torch.stack(codes, 1).reshape(batch, frames, -1).permute(0, 2, 1),
            commitment,
        )

    def decode(self, codes: torch.LongTensor) -> torch.Tensor:
        """codes [B, K', T] (K' <= K: the first K' codebooks) -> latents [B, D, T]."""
        return sum(layer.lookup(codes[:, k]) for k, layer in enumerate(self.layers[: codes.shape[1]])).permute(0, 2, 1)


def _sample_rows(rows: torch.Tensor, count: int) -> torch.Tensor:
    """`count` random rows of `rows` [N, D] (with replacement when N < count)."""
    if rows.shape[0] >= count:
        return rows[torch.randperm(rows.shape[0], device=rows.device)[:count]].clone()
    return rows[torch.randint(rows.shape[0], (count,), device=rows.device)].clone()
