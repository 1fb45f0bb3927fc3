"""transformers' Trainer, taught CSM's two-part loss and its normalisation.

CSM's forward returns a backbone loss (codebook 0 of every labelled frame) and a depth-decoder
loss (codebooks 1..K-1 of the frames selected for it). Under the stock Trainer both are divided by
one `num_items_in_batch`, counted over `labels[..., 1:]`: for 3-D labels that is the number of
depth-decoder targets, so the backbone term comes out K-1 times too small (up to 31x for csm-1b),
and with 2-D processor labels the depth term comes out K-1 times too large. `CsmTrainer` counts
the two kinds of targets separately over the whole accumulated (and, with several processes,
global) batch and normalises each term by its own count, so that

    loss = sum(backbone CE) / backbone targets + depth_loss_weight * sum(depth CE) / depth targets

for the virtual batch, whatever the split into micro-batches and processes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import Trainer

from tokentts.model.prompt import embed_frames
from tokentts.training.examples import IGNORE, CsmTrainingDataset, SeededLengthGroupedSampler


def count_targets(labels: torch.Tensor) -> torch.Tensor:
    """[backbone targets, depth-decoder targets] in labels `[B, T, K]`."""
    return torch.stack([labels[..., 0].ne(IGNORE).sum(), labels[..., 1:].ne(IGNORE).sum()])


def unwrap_csm(model: torch.nn.Module) -> torch.nn.Module:
    """The CsmForConditionalGeneration inside DDP / PEFT wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if isinstance(model, PeftModel) else model


def csm_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(backbone loss, depth-decoder loss), each a mean over its targets in `batch`.

    The frames are embedded here, from codes, and the model gets `inputs_embeds` with 3-D labels:
    the codec never runs during training.
    """
    inputs_embeds = embed_frames(unwrap_csm(model), batch["tokens"], batch["mask"])
    outputs = model(inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], labels=batch["labels"], use_cache=False)
    return outputs.backbone_loss, outputs.depth_decoder_loss


class CsmTrainer(Trainer):
    """Trainer over `CsmTrainingDataset` batches with the normalisation described above."""

    # compute_loss normalises over the accumulated batch itself; the Trainer must not divide again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, depth_loss_weight: float = 1.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.depth_loss_weight = depth_loss_weight
        self._logged_parts = torch.zeros(3)  # backbone sum, depth sum, micro-batches since the last log

    def _get_train_sampler(self, train_dataset: CsmTrainingDataset | None = None) -> SeededLengthGroupedSampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        group = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return SeededLengthGroupedSampler(dataset, group, self.args.seed)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        if not batch_samples:
            return None
        counts = sum(count_targets(batch["labels"]) for batch in batch_samples).to(device)
        if self.args.world_size > 1:
            counts = self.accelerator.gather(counts[None]).sum(0)
        return counts

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | None = None):
        backbone_loss, depth_loss = csm_losses(model, inputs)
        local = count_targets(inputs["labels"]).to(backbone_loss.device)
        total = num_items_in_batch if num_items_in_batch is not None else local
        # transformers' losses are means over this micro-batch; turn them into sums over the whole batch's targets.
        loss = backbone_loss * (local[0] / total[0]) + self.depth_loss_weight * depth_loss * (local[1] / total[1])
        if self.args.world_size > 1 and num_items_in_batch is not None:
            loss = loss * self.args.world_size  # DDP averages gradients over processes; the counts were global
        if model.training:
            self._logged_parts += torch.tensor([backbone_loss.item(), depth_loss.item(), 1.0])
        return (loss, {"backbone_loss": backbone_loss.detach(), "depth_loss": depth_loss.detach()}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._logged_parts[2] > 0:
            parts = self._logged_parts.to(self.args.device)
            if self.args.world_size > 1:
                parts = self.accelerator.reduce(parts, reduction="sum")
            logs["backbone_loss"] = round(float(parts[0] / parts[2]), 4)
            logs["depth_loss"] = round(float(parts[1] / parts[2]), 4)
            self._logged_parts.zero_()
        super().log(logs, start_time)


def plot_loss_curves(log_history: list[dict[str, Any]], path: Path) -> Path | None:
    """PNG of the training loss (and its backbone / depth parts) and the evaluation loss per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[int], list[float]]] = {}
    for entry in log_history:
        for key in ("loss", "backbone_loss", "depth_loss", "eval_loss"):
            if key in entry and "step" in entry and math.isfinite(entry[key]):
                steps, values = series.setdefault(key, ([], []))
                steps.append(entry["step"])
                values.append(entry[key])
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {"loss": ("train", "-"), "backbone_loss": ("train, backbone (codebook 0)", ":"),
              "depth_loss": ("train, depth decoder", ":"), "eval_loss": ("eval", "o-")}
    for key, (steps, values) in series.items():
        label, style = styles[key]
        ax.plot(steps, values, style, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
