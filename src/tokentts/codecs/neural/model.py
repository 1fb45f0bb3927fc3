"""The neural codec network: log-mel encoder -> residual VQ -> Vocos-style iSTFT decoder.

Shapes (B clips, T code frames, F = T * stft_frames_per_code STFT frames):

    wav [B, T*samples_per_frame] --STFT/mel--> [B, n_mels, F] --encoder--> latents [B, latent_dim, T]
    latents --RVQ--> codes [B, K, T] and quantized latents [B, latent_dim, T]
    (with Whisper units: codebook 0 = units [B, T] of the wav, the RVQ's K-1 codebooks quantize
     latents - unit_embedding(units))
    quantized --decoder--> complex spectrum [B, n_fft/2+1, F] --iSTFT--> wav [B, T*samples_per_frame]

The encoder reads a fixed log-mel front end and the decoder predicts an STFT (magnitude and
phase) that one inverse FFT turns into samples, as in Vocos: no learned up-sampling to 24 kHz.
Both sides are small transformers with banded (local) attention that run entirely at the code
frame rate, so nearly all the work is matrix products, which keeps training cheap on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tokentts.codecs.neural.quantizer import QuantizerOutput, ResidualVectorQuantizer
from tokentts.codecs.neural.units import nearest_units, whisper_features


@dataclass
class CodecModelConfig:
    sample_rate: int = 24_000
    n_fft: int = 1024
    hop_length: int = 240  # 100 STFT frames per second
    n_mels: int = 80
    stft_frames_per_code: int = 4  # STFT frames per code frame: 4 x 10 ms -> 25 code frames/s
    hidden_dim: int = 192
    latent_dim: int = 128
    encoder_layers: int = 3  # transformer blocks, all at the code frame rate
    decoder_layers: int = 4
    num_heads: int = 4
    attention_window: int = 8  # frames each side a frame attends to (8 = 0.32 s at 25 frames/s)
    num_codebooks: int = 8
    codebook_size: int = 256
    codebook_decay: float = 0.99
    dead_code_fraction: float = 0.1
    # > 0: codebook 0 is not learned but the nearest of `codebook_size` k-means centroids of the bundled
    # Whisper tiny.en's encoder features (of this dimension), see units.py; the other codebooks code the rest.
    unit_dim: int = 0

    @property
    def samples_per_frame(self) -> int:
        return self.hop_length * self.stft_frames_per_code

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.samples_per_frame


class LocalSelfAttention(nn.Module):
    """Multi-head self-attention over the frames within `window` of each frame, with a learned
    bias per head and relative offset (T5-style) for position. The band keeps a frame's code
    independent of how long the clip is, so 2-second training crops carry over to long clips."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads, self.window = num_heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.relative_bias = nn.Parameter(torch.zeros(num_heads, 2 * window + 1))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, C]; valid [B, T] marks real frames (padding frames are never attended to)."""
        batch, frames, dim = x.shape
        q, k, v = self.qkv(x).view(batch, frames, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        positions = torch.arange(frames, device=x.device)
        offsets = positions[None, :] - positions[:, None]  # [T query, T key]: key - query
        bias = self.relative_bias[:, offsets.clamp(-self.window, self.window) + self.window]  # [H, T, T]
        bias = bias.masked_fill(offsets.abs() > self.window, float("-inf"))
        if valid is not None:
            # Padding keys are hidden from every query but themselves, so no row is fully masked (NaN).
            hidden = ~valid[:, None, None, :] & (offsets != 0)
            bias = bias.masked_fill(hidden, float("-inf"))  # [B, H, T, T]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, H, T, C/H]
        return self.out(attended.transpose(1, 2).reshape(batch, frames, dim))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = LocalSelfAttention(dim, num_heads, window)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 3 * dim), nn.GELU(), nn.Linear(3 * dim, dim))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:  # [B, T, C]
        x = x + self.attention(self.attention_norm(x), valid)
        return x + self.mlp(self.mlp_norm(x))


class MelFrontEnd(nn.Module):
    """Log-mel spectrogram whose frames line up with the code grid (and the decoder's STFT)."""

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int):
        super().__init__()
        import librosa

        self.n_fft, self.hop_length = n_fft, hop_length
        mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
        self.register_buffer("mel_basis", torch.from_numpy(mel).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, N] (N a multiple of hop_length) -> log-mel [B, n_mels, N / hop_length]."""
        # Zero ("constant") edge padding: the last frames of a clip then see the same zeros whether
        # the clip is encoded alone or padded inside a batch.
        spec = torch.stft(
            wav, self.n_fft, self.hop_length, window=self.window, pad_mode="constant", return_complex=True
        ).abs()
        # center=True gives one frame more than N / hop; drop it so F = T * frames_per_code exactly.
        return torch.log(torch.clamp(self.mel_basis @ spec[..., :-1], min=1e-5))


class Encoder(nn.Module):
    def __init__(self, config: CodecModelConfig):
        super().__init__()
        # The mel frames of one code frame are stacked into one vector ("patches" of the spectrogram).
        self.frames_per_code = config.stft_frames_per_code
        self.embed = nn.Linear(config.n_mels * config.stft_frames_per_code, config.hidden_dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(config.hidden_dim, config.num_heads, config.attention_window) for _ in range(config.encoder_layers)
        )
        self.norm = nn.LayerNorm(config.hidden_dim)
        self.project = nn.Linear(config.hidden_dim, config.latent_dim)

    def forward(self, mel: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """mel [B, n_mels, F] -> latents [B, latent_dim, T]; valid [B, T] marks frames inside each clip."""
        batch, n_mels, stft_frames = mel.shape
        patches = mel.transpose(1, 2).reshape(batch, stft_frames // self.frames_per_code, self.frames_per_code * n_mels)
        h = self.embed(patches)
        for block in self.blocks:
            h = block(h, valid)
        return self.project(self.norm(h)).transpose(1, 2)


class Decoder(nn.Module):
    def __init__(self, config: CodecModelConfig):
        super().__init__()
        self.n_fft, self.hop_length = config.n_fft, config.hop_length
        self.frames_per_code = config.stft_frames_per_code
        self.embed = nn.Linear(config.latent_dim, config.hidden_dim)
        self.blocks = nn.Sequential(
            *(TransformerBlock(config.hidden_dim, config.num_heads, config.attention_window) for _ in range(config.decoder_layers))
        )
        self.norm = nn.LayerNorm(config.hidden_dim)
        # Each code frame predicts the log-magnitude and phase of its stft_frames_per_code STFT frames.
        self.head = nn.Linear(config.hidden_dim, config.stft_frames_per_code * (config.n_fft + 2))
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:  # [B, latent_dim, T] -> wav [B, T*samples_per_frame]
        batch, _, frames = latents.shape
        h = self.head(self.norm(self.blocks(self.embed(latents.transpose(1, 2)))))  # [B, T, frames_per_code * (n_fft+2)]
        h = h.reshape(batch, frames * self.frames_per_code, self.n_fft + 2).transpose(1, 2)  # [B, n_fft+2, F]
        log_magnitude, phase = h.chunk(2, dim=1)
        # Clamp as Vocos does: exp of an untrained head can overflow.
        spectrum = torch.exp(log_magnitude.clamp(max=7.0)) * torch.exp(1j * phase)
        # iSTFT with center=True wants one frame more than N / hop: repeat the last one.
        spectrum = torch.cat([spectrum, spectrum[..., -1:]], dim=-1)
        stft_frames = spectrum.shape[-1] - 1
        return torch.istft(spectrum, self.n_fft, self.hop_length, window=self.window, length=stft_frames * self.hop_length)


@dataclass
class CodecOutput:
    audio: torch.Tensor  # [B, N] reconstruction
    quantizer: QuantizerOutput


class CodecModel(nn.Module):
    def __init__(self, config: CodecModelConfig):
        super().__init__()
        self.config = config
        self.front_end = MelFrontEnd(config.sample_rate, config.n_fft, config.hop_length, config.n_mels)
        self.encoder = Encoder(config)
        learned_codebooks = config.num_codebooks - (1 if config.unit_dim else 0)
        self.quantizer = ResidualVectorQuantizer(
            config.latent_dim, learned_codebooks, config.codebook_size, config.codebook_decay, config.dead_code_fraction
        )
        self.decoder = Decoder(config)
        self.unit_embedding = None
        if config.unit_dim:
            # Codebook 0 of a Whisper-unit codec: fixed centroids (set once by training) and, learned,
            # what each unit contributes to the latents the decoder reads.
            self.register_buffer("unit_centroids", torch.zeros(config.codebook_size, config.unit_dim))
            self.unit_embedding = nn.Embedding(config.codebook_size, config.latent_dim)

    def pad(self, wav: torch.Tensor) -> torch.Tensor:
        """Zero-pad [B, N] at the end to a whole number of code frames."""
        remainder = wav.shape[-1] % self.config.samples_per_frame
        return F.pad(wav, (0, self.config.samples_per_frame - remainder)) if remainder else wav

    def encode_latents(self, wav: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        """wav [B, N] -> latents [B, latent_dim, T]; with `lengths` (samples per clip), frames past
        a clip's end are masked out, so a clip encodes the same alone or in a padded batch."""
        wav = self.pad(wav)
        valid = None
        if lengths is not None:
            frames = wav.shape[-1] // self.config.samples_per_frame
            counts = torch.tensor([-(-n // self.config.samples_per_frame) for n in lengths])
            valid = torch.arange(frames)[None, :] < counts[:, None]
        return self.encoder(self.front_end(wav), valid)

    def units(self, wav: torch.Tensor, lengths: list[int] | None = None) -> torch.LongTensor:
        """Codebook 0 of a Whisper-unit codec: wav [B, N] -> units [B, T] (Whisper runs on each clip alone)."""
        frames = self.pad(wav).shape[-1] // self.config.samples_per_frame
        clips = [row[:n].cpu().numpy() for row, n in zip(wav, lengths or [wav.shape[-1]] * len(wav))]
        features = whisper_features(clips, self.config.sample_rate, self.config.frame_rate)
        centroids = self.unit_centroids.cpu()
        return torch.stack([nearest_units(centroids, f, frames) for f in features]).to(wav.device)

    def quantize(self, latents: torch.Tensor, units: torch.LongTensor | None = None,
                 num_codebooks: int | None = None) -> QuantizerOutput:
        """latents [B, latent_dim, T] (and, for a Whisper-unit codec, units [B, T]) -> codes of the first
        `num_codebooks` codebooks (all by default) and the latents they quantize to."""
        if self.unit_embedding is None:
            return self.quantizer(latents, num_codebooks)
        base = self.unit_embedding(units).transpose(1, 2)  # [B, latent_dim, T]
        learned = (num_codebooks or self.config.num_codebooks) - 1
        if learned == 0:
            return QuantizerOutput(base, units[:, None], latents.new_zeros(()))
        # The learned codebooks quantize what the unit leaves. Detached there, so that the residual's
        # straight-through estimator does not cancel the reconstruction loss's gradient to the embedding.
        rest = self.quantizer(latents - base.detach(), learned)
        return QuantizerOutput(base + rest.quantized, torch.cat([units[:, None], rest.codes], 1), rest.commitment_loss)

    def dequantize(self, codes: torch.LongTensor) -> torch.Tensor:
        """codes [B, K', T] (the first K' <= K codebooks) -> quantized latents [B, latent_dim, T]."""
        if self.unit_embedding is None:
            return self.quantizer.decode(codes)
        latents = self.unit_embedding(codes[:, 0]).transpose(1, 2)
        return latents + self.quantizer.decode(codes[:, 1:]) if codes.shape[1] > 1 else latents

    def encode(self, wav: torch.Tensor, lengths: list[int] | None = None,
               units: torch.LongTensor | None = None) -> torch.LongTensor:
        """wav [B, N] -> codes [B, K, ceil(N / samples_per_frame)]; `units`: codebook 0 if already known."""
        if self.unit_embedding is not None and units is None:
            units = self.units(wav, lengths)
        return self.quantize(self.encode_latents(wav, lengths), units).codes

    def decode(self, codes: torch.LongTensor) -> torch.Tensor:
        """codes [B, K', T] (the first K' <= K codebooks) -> wav [B, T * samples_per_frame]."""
        return self.decoder(self.dequantize(codes))

    def forward(self, wav: torch.Tensor, num_codebooks: int | None = None,
                units: torch.LongTensor | None = None) -> CodecOutput:
        if self.unit_embedding is not None and units is None:
            units = self.units(wav)
        quantized = self.quantize(self.encode_latents(wav), units, num_codebooks)
        return CodecOutput(self.decoder(quantized.quantized), quantized)
