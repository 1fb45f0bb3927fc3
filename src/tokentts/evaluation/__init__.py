"""Evaluation of cloned and fine-tuned voices: base vs clone vs fine-tuned vs fine-tuned + clone.

`evaluate(EvaluateConfig(...))` generates the test sentences under every condition and scores
each sample (WER/CER, speaker similarity, timing and pauses, DNSMOS, real-time factor);
`write_reports(report, out_dir)` writes report.json, report.md and a self-contained report.html.
"""

from tokentts.evaluation.report import write_reports
from tokentts.evaluation.runner import (
    METRICS,
    ClipScores,
    Condition,
    ConditionResult,
    EvaluateConfig,
    EvaluationReport,
    Metric,
    SampleResult,
    Scorer,
    evaluate,
    plan_conditions,
)
from tokentts.evaluation.sentences import DEFAULT_SENTENCES, load_sentences
from tokentts.evaluation.stats import Estimate, bootstrap_mean

__all__ = [
    "DEFAULT_SENTENCES",
    "METRICS",
    "ClipScores",
    "Condition",
    "ConditionResult",
    "Estimate",
    "EvaluateConfig",
    "EvaluationReport",
    "Metric",
    "SampleResult",
    "Scorer",
    "bootstrap_mean",
    "evaluate",
    "load_sentences",
    "plan_conditions",
    "write_reports",
]
