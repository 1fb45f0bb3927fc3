"""`tokentts evaluate`: metrics on speech with a known script, a whole run on the tiny model,
and the HTML report in headless Chromium."""

import json

import numpy as np
import pytest
import torch

from tokentts.asr import load_asr
from tokentts.audio import write_audio
from tokentts.audio.synth import EspeakVoice, synthesize_espeak
from tokentts.cli import main
from tokentts.evaluation import (
    METRICS,
    Condition,
    ClipScores,
    ConditionResult,
    Estimate,
    EvaluateConfig,
    EvaluationReport,
    SampleResult,
    bootstrap_mean,
    evaluate,
    plan_conditions,
    write_reports,
)
from tokentts.evaluation.metrics import SpeakerEncoder, cosine, dnsmos, pause_stats, transcribe_for_scoring, word_errors
from tokentts.evaluation.sentences import DEFAULT_SENTENCES

SENTENCE = "The weather is lovely today, so we are going for a walk by the river."
REFERENCE_TEXT = "This is my own voice, recorded for cloning."


@pytest.fixture(scope="module")
def asr():
    return load_asr("bundled")


@pytest.fixture(scope="module")
def encoder():
    return SpeakerEncoder()


# --- metrics on known inputs -----------------------------------------------------------------


def test_wer_is_low_for_espeak_of_the_text_and_high_for_shuffled_text(asr):
    # Three sentences, pooled: eSpeak jitters a little from call to call (unseedable), and on some
    # calls tiny.en mishears a sentence's first words; over 40 words that stays a small WER.
    sentences = DEFAULT_SENTENCES[:3]
    heard = [transcribe_for_scoring(asr, synthesize_espeak(s, EspeakVoice(variant="m3"))) for s in sentences]
    assert word_errors(" ".join(sentences), " ".join(heard)).wer < 0.25
    shuffled = " ".join(np.random.default_rng(0).permutation(SENTENCE.split()))
    assert word_errors(shuffled, heard[0]).wer > 0.6


def test_a_looping_transcript_is_decoded_again_without_the_loop(asr):
    from tokentts.asr import transcribe
    from tokentts.audio import SAMPLE_RATE
    from tokentts.evaluation.metrics import SCORING_PAD_SECONDS, compression_ratio

    sung = synthesize_espeak("la " * 16)
    # tiny.en at temperature 0 hears far more than was said: a loop that would cost a WER of several.
    looped = transcribe(asr, sung, word_timestamps=False, vad=False, language="en", temperature=0.0).text
    assert compression_ratio(looped) > 2.4 and len(looped.split()) > 48
    scored = transcribe_for_scoring(asr, sung)
    assert compression_ratio(scored) < 2.4 and word_errors("la " * 16, scored).wer <= 1.0
    assert transcribe_for_scoring(asr, sung) == scored  # still deterministic
    # A transcript that does not loop is the plain beam search's.
    speech = synthesize_espeak(SENTENCE)
    assert transcribe_for_scoring(asr, speech) == transcribe(
        asr, np.pad(speech, int(SCORING_PAD_SECONDS * SAMPLE_RATE)), word_timestamps=False, vad=False, language="en", temperature=0.0).text


def test_wer_normalises_written_forms_and_counts_errors():
    assert word_errors("Mr. Smith paid $20 for 2 apples.", "mister smith paid twenty dollars for two apples").wer == 0
    errors = word_errors("the cat sat down", "the hat sat")
    assert (errors.substitutions, errors.deletions, errors.insertions) == (1, 1, 0)
    assert errors.wer == pytest.approx(0.5) and 0 < errors.cer < errors.wer


def test_same_voice_pairs_are_more_similar_than_different_voice_pairs(encoder):
    texts = DEFAULT_SENTENCES[:2]
    male, female = EspeakVoice(variant="m3", pitch=40), EspeakVoice(variant="f2", pitch=70)
    male_a, male_b = (encoder.embed(synthesize_espeak(t, male)) for t in texts)
    female_b = encoder.embed(synthesize_espeak(texts[1], female))
    same, different = cosine(male_a, male_b), cosine(male_a, female_b)
    assert same > 0.8 and same - different > 0.15


def test_a_long_inserted_silence_is_flagged():
    speech = synthesize_espeak(SENTENCE, EspeakVoice(variant="m3"))
    half = len(speech) // 2
    with_gap = np.concatenate([speech[:half], np.zeros(3 * 24000, np.float32), speech[half:]])
    normal, gapped = pause_stats(speech), pause_stats(with_gap)
    threshold = EvaluateConfig().long_pause_seconds
    assert normal.longest_pause_s < 0.5 < threshold < gapped.longest_pause_s
    assert gapped.longest_pause_s == pytest.approx(3.0, abs=0.2)
    assert gapped.silence_ratio > normal.silence_ratio + 0.3
    assert gapped.speech_span_s == pytest.approx(normal.speech_span_s + 3.0, abs=0.2)


def test_dnsmos_scores_clean_speech_above_noisy_speech():
    clean = synthesize_espeak(SENTENCE, EspeakVoice(variant="m3"))
    noisy = clean + np.random.default_rng(0).normal(0, 0.1, len(clean)).astype(np.float32)
    assert dnsmos(clean).overall > dnsmos(noisy).overall + 0.5


def test_bootstrap_interval_is_over_sentences_and_repeatable():
    by_sentence = [[0.1, 0.2], [0.5, 0.4], [0.9, 1.0], [0.3]]
    estimate = bootstrap_mean(by_sentence)
    assert estimate.mean == pytest.approx(3.4 / 7) and estimate.n == 7
    assert estimate.low < estimate.mean < estimate.high
    assert bootstrap_mean(by_sentence) == estimate
    single = bootstrap_mean([[0.2, 0.4, 0.6]])  # one sentence: the interval comes from its samples
    assert single.low < 0.4 < single.high
    assert bootstrap_mean([[], []]) is None


def test_conditions_pair_each_model_with_and_without_cloning(tmp_path):
    assert [c.name for c in plan_conditions([])] == ["base", "base + clone"]
    names = [c.name for c in plan_conditions([tmp_path / "lora"])]
    assert names == ["base", "base + clone", "fine-tuned", "fine-tuned + clone"]
    two = plan_conditions([tmp_path / "a", tmp_path / "b"])
    assert [c.name for c in two][2:] == ["fine-tuned a", "fine-tuned a + clone", "fine-tuned b", "fine-tuned b + clone"]


def test_best_condition_is_marked_by_direction_and_ties_mark_none():
    def report_with(means):
        results = [ConditionResult(Condition(name, None, False), [], {"wer": Estimate(m, m, m, 1), "rate_vs_reference":
                                                                        Estimate(m * 4, m * 4, m * 4, 1)})
                   for name, m in means.items()]
        return EvaluationReport(EvaluateConfig(), [], None, results, "", "", None, "")

    wer, rate = (next(m for m in METRICS if m.key == key) for key in ("wer", "rate_vs_reference"))
    report = report_with({"base": 0.30, "base + clone": 0.20, "fine-tuned": 0.20, "fine-tuned + clone": 0.25})
    assert report.best(wer) == ["base + clone", "fine-tuned"]
    assert report.best(rate) == ["fine-tuned + clone"]  # 1.0: closest to the reference's rate
    assert report_with({"base": 0.2, "base + clone": 0.2}).best(wer) == []


def test_paired_differences_tell_a_consistent_gain_from_noise():
    def condition(name, similarities):
        samples = [SampleResult(i, j, 1000 * i + j, "text", ClipScores("", 0.0, 0.0, sim, 1.0, 150.0, 0.1, 0.1, None),
                                None, False, "eos", False, 0.5, np.zeros(1, np.float32))
                   for i, row in enumerate(similarities) for j, sim in enumerate(row)]
        return ConditionResult(Condition(name, None, False), samples, {})

    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.7, size=(8, 2))
    report = EvaluationReport(EvaluateConfig(), ["s"] * 8, None, [
        condition("base", base),
        condition("base + clone", base + 0.05 + rng.normal(0, 0.01, size=base.shape)),  # small but consistent
        # Noise only: each sentence's two samples move by +x and -x.
        condition("fine-tuned", base + rng.normal(0, 0.05, size=(8, 1)) * np.array([1.0, -1.0])),
    ], "", "", None, "")
    similarity = next(m for m in METRICS if m.key == "similarity")
    found = {(d.later, d.earlier): d for d in report.differences(similarity)}
    assert set(found) == {("base + clone", "base"), ("fine-tuned", "base"), ("fine-tuned", "base + clone")}
    gain = found["base + clone", "base"]
    assert gain.estimate.mean == pytest.approx(0.05, abs=0.01) and gain.beyond_interval
    assert not found["fine-tuned", "base"].beyond_interval
    assert found["fine-tuned", "base"].estimate.mean == pytest.approx(0.0, abs=1e-12)
    assert found["fine-tuned", "base + clone"].estimate.mean < 0


# --- a whole run on the tiny model -----------------------------------------------------------


@pytest.fixture(scope="module")
def voice_setup(tmp_path_factory):
    """A tiny CSM, a LoRA adapter with non-zero weights, a reference clip and a sentences file."""
    from peft import LoraConfig, get_peft_model
    from transformers import CsmForConditionalGeneration

    from tokentts.model import save_tiny_csm

    root = tmp_path_factory.mktemp("evaluate")
    model_dir = save_tiny_csm(root / "tiny")
    peft_model = get_peft_model(CsmForConditionalGeneration.from_pretrained(model_dir),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # LoRA B starts at zero; perturb it so the adapter changes the model
        generator = torch.Generator().manual_seed(0)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(root / "adapter")
    reference = write_audio(root / "reference.wav", synthesize_espeak(REFERENCE_TEXT, EspeakVoice(variant="m3")))
    sentences = root / "sentences.txt"
    sentences.write_text("# test sentences\nHello there.\n\nGood morning to you.\n")
    recordings = [write_audio(root / f"recording{i}.wav", synthesize_espeak(text, EspeakVoice(variant="m3")))
                  for i, text in enumerate(["Hello there.", "Good morning to you."])]
    return {"root": root, "model": model_dir, "adapter": root / "adapter", "reference": reference, "sentences": sentences,
            "recordings": recordings}


@pytest.fixture(scope="module")
def evaluation(voice_setup):
    config = EvaluateConfig(
        model=str(voice_setup["model"]),
        adapters=[voice_setup["adapter"]],
        reference=voice_setup["reference"],  # no transcript: the ASR model transcribes it
        sentences=voice_setup["sentences"],
        recordings=voice_setup["recordings"],
        samples_per_sentence=1,
        max_seconds=1.0,
        asr_model="bundled",
    )
    report = evaluate(config)
    out_dir = write_reports(report, voice_setup["root"] / "report")
    return report, out_dir


def test_evaluate_returns_numbers_for_every_condition_and_sample(evaluation):
    report, _ = evaluation
    assert [c.condition.name for c in report.conditions] == ["recordings", "base", "base + clone", "fine-tuned",
                                                             "fine-tuned + clone"]
    # The recordings row: real speech of the sentences, which the ASR model gets (nearly) right.
    recorded, generated = report.conditions[0], report.conditions[1:]
    assert recorded.summary["wer"].mean <= 0.25 and recorded.summary["real_time_factor"] is None
    assert all(c.summary["wer"].mean > recorded.summary["wer"].mean for c in generated)  # random models babble
    assert report.asr_model == "tiny.en (bundled)" and "Resemblyzer" in report.speaker_model and report.dnsmos_model
    assert report.reference.transcribed and word_errors(REFERENCE_TEXT, report.reference.text).wer < 0.3
    for result in generated:
        assert [(s.sentence_index, s.sample_index) for s in result.samples] == [(0, 0), (1, 0)]
        # Sample j of sentence i has the same seed in every condition (paired comparison).
        assert [s.seed for s in result.samples] == [s.seed for s in generated[0].samples]
        for sample in result.samples:
            assert 0 < sample.scores.duration_s <= 1.0 + 0.1
            assert sample.stop_reason in ("eos", "max_length", "runaway") and sample.real_time_factor > 0
            assert sample.scores.dnsmos is not None and 1 <= sample.scores.dnsmos.overall <= 5
        for key in ("wer", "cer", "duration_s", "silence_ratio", "runaway_rate", "real_time_factor", "dnsmos"):
            estimate = result.summary[key]
            assert estimate.n == 2 and estimate.low <= estimate.mean <= estimate.high


def test_evaluate_writes_json_markdown_html_and_samples(evaluation):
    report, out_dir = evaluation
    names = {p.name for p in out_dir.iterdir()}
    assert {"report.json", "report.md", "report.html", "config.json", "reference.wav", "samples"} <= names
    data = json.loads((out_dir / "report.json").read_text())
    assert data["models"]["asr"] == "tiny.en (bundled)" and "Resemblyzer" in data["models"]["speaker_embedding"]
    assert [c["name"] for c in data["conditions"]] == [c.condition.name for c in report.conditions]
    wer = data["conditions"][0]["summary"]["wer"]
    assert wer["mean"] == pytest.approx(report.conditions[0].summary["wer"].mean) and wer["low"] <= wer["high"]
    for condition in data["conditions"]:
        for sample in condition["samples"]:
            assert (out_dir / sample["audio_file"]).stat().st_size > 1000
    pairs = [(d["later"], d["earlier"]) for d in data["differences"] if d["metric"] == "similarity"]
    assert len(pairs) == 6 and ("fine-tuned + clone", "base") in pairs and ("base", "recordings") not in pairs
    markdown = (out_dir / "report.md").read_text()
    assert "## Paired differences" in markdown
    assert "| Condition | WER |" in markdown and "tiny.en (bundled)" in markdown and "**" in markdown
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(".report.")]  # no staging folder left


def test_html_report_plays_in_headless_chromium(evaluation, browser_page):
    report, out_dir = evaluation
    page = browser_page
    page.goto((out_dir / "report.html").as_uri())
    rows = page.locator("#results tbody tr")
    assert rows.count() == len(report.conditions) + 1  # + the reference recording
    headers = page.eval_on_selector_all("#results thead th", "els => els.map(e => e.textContent)")
    assert headers[:3] == ["Condition", "WER", "CER"] and "Speaker similarity" in headers
    audio = page.locator("audio")
    assert audio.count() == 1 + sum(len(c.samples) for c in report.conditions)
    # Self-contained: every audio and image source is embedded.
    sources = page.eval_on_selector_all("audio, img", "els => els.map(e => e.getAttribute('src'))")
    assert all(src.startswith("data:") for src in sources)
    page.wait_for_function(
        "[...document.querySelectorAll('audio')].every(a => a.readyState >= 1 || a.error)", timeout=30_000
    )
    states = page.eval_on_selector_all("audio", "els => els.map(a => [a.error && a.error.code, a.duration])")
    assert all(error is None and duration > 0 for error, duration in states), states
    widths = page.eval_on_selector_all(".charts img", "els => els.map(i => i.naturalWidth)")
    assert widths and all(w > 0 for w in widths)
    assert page.errors == []


def test_cli_repeats_the_samples_exactly_and_rejects_bad_input_in_one_line(evaluation, voice_setup, tmp_path, capsys):
    common = ["evaluate", "--model", str(voice_setup["model"]), "--sentences", str(voice_setup["sentences"]),
              "--num-sentences", "1", "--samples-per-sentence", "1", "--max-seconds", "1", "--asr-model", "bundled",
              "--no-dnsmos"]
    out = tmp_path / "cli-report"
    # No --reference-text, as in the API run: both transcribe the reference the same way.
    assert main([*common, "--reference", str(voice_setup["reference"]), "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["models"]["dnsmos"] is None
    assert "base + clone" in capsys.readouterr().out
    # Same seeds, same model, same reference: the same audio as the Python API run, sample for sample,
    # though that run generated both sentences in one batch and this one a batch of one.
    _, first_run = evaluation
    for sample in ("samples/base/s00-0.wav", "samples/base-clone/s00-0.wav"):
        assert (out / sample).read_bytes() == (first_run / sample).read_bytes()

    assert main([*common, "--reference", str(tmp_path / "missing.wav"), "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip()
    assert "missing.wav" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "x").exists()

    assert main([*common, "--reference", str(voice_setup["reference"]), "--batch-size", "0",
                 "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip()
    assert "batch_size must be at least 1" in error and len(error.splitlines()) == 1

    # One sentence, two recordings: refused before any model is loaded.
    assert main([*common, "--reference", str(voice_setup["reference"]), "--recordings",
                 *map(str, voice_setup["recordings"]), "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip()
    assert "2 recordings for 1 test sentences" in error and len(error.splitlines()) == 1

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("not a report")
    assert main([*common, "--reference", str(voice_setup["reference"]), "--reference-text", REFERENCE_TEXT,
                 "--out", str(tmp_path / "notes")]) == 2
    assert (tmp_path / "notes" / "keep.txt").exists()
