"""Spectral reconstruction losses: multi-resolution STFT (spectral convergence + log magnitude) and log-mel L1.

Several window sizes together pin down both timing (short windows) and pitch harmonics (long
windows); comparing magnitudes of overlapping frames also makes the decoder's predicted phases
consistent, since a wrong phase smears energy between neighbouring frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tokentts.codecs.neural.model import MelFrontEnd

STFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))  # (n_fft, hop)


@dataclass
class ReconstructionLosses:
    stft: torch.Tensor
    mel: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.stft + self.mel


def _magnitude(wav: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    return torch.stft(wav, n_fft, hop, window=window, return_complex=True).abs().clamp(min=1e-5)


class SpectralLoss(nn.Module):
    def __init__(self, front_end: MelFrontEnd, resolutions: tuple[tuple[int, int], ...] = STFT_RESOLUTIONS):
        super().__init__()
        self.front_end = front_end  # the encoder's own log-mel, so the loss looks at what the encoder sees
        self.resolutions = resolutions
        for n_fft, _ in resolutions:
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> ReconstructionLosses:
        stft = reconstruction.new_zeros(())
        for n_fft, hop in self.resolutions:
            window = getattr(self, f"window_{n_fft}")
            predicted, actual = _magnitude(reconstruction, n_fft, hop, window), _magnitude(target, n_fft, hop, window)
            convergence = torch.linalg.norm(actual - predicted) / torch.linalg.norm(actual)
            stft = stft + convergence + F.l1_loss(predicted.log(), actual.log())
        mel = F.l1_loss(self.front_end(reconstruction), self.front_end(target))
        return ReconstructionLosses(stft / len(self.resolutions), mel)
