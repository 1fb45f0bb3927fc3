"""The demo end to end on small settings: every stage runs for real and leaves its outputs."""

import json

from datasets import load_from_disk

from tokentts.audio import write_audio
from tokentts.audio.synth import synthesize_piper
from tokentts.cli import main
from tokentts.data.synthetic import synthetic_speakers


def test_demo_runs_every_stage_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--train-sentences", "10", "--test-sentences", "1", "--target-clips", "1",
                 "--samples-per-sentence", "1", "--max-steps", "6", "--codec-decoder-steps", "5", "--max-seconds", "2"])
    printed = capsys.readouterr().out
    assert code == 0
    for stage in range(1, 6):
        assert f"[{stage}/5]" in printed
    assert "report.html" in printed

    summary = json.loads((out / "dataset" / "summary.json").read_text())
    assert summary["clips"] >= 2
    # Snippets as short as the base model's training sentences, their silent edges cut for its timed text.
    assert summary["max_seconds"] <= 6.0
    tuned = json.loads((out / "adapter" / "finetune_config.json").read_text())
    # A context clip in every fine-tuning example, so the fine-tuned voice still takes a clone's context;
    # the depth decoder, whose fine codes carry the voice, trained on every frame.
    assert tuned["trim_silence"] is True and tuned["context_probability"] == 1.0 and tuned["depth_frame_fraction"] == 1.0
    assert (out / "adapter" / "adapter_config.json").is_file()
    # Beside Joe, the fine-tune learns the base corpus's eSpeak speakers 1-12 from context clips, 70 % of
    # their examples under one another's ids (prior preservation), on sentences outside the demo's script.
    prior = load_from_disk(str(out / "prior-dataset"))
    assert sorted(set(prior["source"]), key=int) == [str(i) for i in range(1, 13)] and len(prior) == 48
    base_voices = {str(i): voice.name for i, voice in enumerate(synthetic_speakers(40))}
    assert all(f"espeak:{base_voices[speaker]}:" in file for speaker, file in zip(prior["source"], prior["source_file"]))
    script = set((out / "test_sentences.txt").read_text().splitlines()) | {(out / "reference.txt").read_text().strip()}
    assert not set(prior["text"]) & script
    assert tuned["prior_dataset"] == str(out / "prior-dataset") and tuned["context_speaker_swap"] == 0.7
    assert json.loads((out / "adapter" / "metrics.json").read_text())["data"]["prior_clips"] == 48
    # The embedded base model: the fine-tuned voice brings its adapted codec decoder and speaking rate.
    assert "using the embedded base model" in printed
    assert (out / "adapter" / "codec" / "model.safetensors").is_file() and (out / "adapter" / "speaking_rate.json").is_file()
    report = json.loads((out / "report" / "report.json").read_text())
    assert [c["name"] for c in report["conditions"]] == ["base", "base + clone", "fine-tuned", "fine-tuned + clone"]
    assert (out / "report" / "report.html").stat().st_size > 10_000
    assert json.loads((out / "config.json").read_text())["max_steps"] == 6
    # Similarity is measured against the reference clip and one more held-out clip of the voice, not a test sentence.
    targets = [out / "reference.wav", out / "target-00.wav"]
    assert report["config"]["target_clips"] == [str(p) for p in targets] and all(p.is_file() for p in targets)
    # The target voice is seeded: a rerun with the same --seed records the very same reference clip.
    reference_text = (out / "reference.txt").read_text().strip()
    again = write_audio(tmp_path / "again.wav", synthesize_piper(reference_text, seed=0))
    assert again.read_bytes() == (out / "reference.wav").read_bytes()


def test_demo_rejects_a_bad_count_in_one_line(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--target-clips", "-1"]) != 0
    assert "target_clips and prior_speakers at least 0" in capsys.readouterr().err and not (tmp_path / "demo").exists()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--prior-speakers", "-1"]) != 0
    assert "target_clips and prior_speakers at least 0" in capsys.readouterr().err and not (tmp_path / "demo").exists()


def test_demo_rejects_a_bad_share_before_any_stage(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--context-probability", "1.5"]) != 0
    assert "prior_speaker_swap must be in [0, 1]" in capsys.readouterr().err and not (tmp_path / "demo").exists()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--depth-frame-fraction", "0"]) != 0
    assert "depth_frame_fraction must be in (0, 1]" in capsys.readouterr().err and not (tmp_path / "demo").exists()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--lora-models", "codec"]) != 0
    assert "lora_models must name one or both" in capsys.readouterr().err and not (tmp_path / "demo").exists()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--prior-speaker-swap", "1.5"]) != 0
    assert "prior_speaker_swap must be in [0, 1]" in capsys.readouterr().err and not (tmp_path / "demo").exists()
