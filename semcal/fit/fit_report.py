"""fit_report.md: what `semcal fit` found, written as advice for the person who will run the filter.

Every number comes from fit_results.json (semcal.fit.fit, semcal.fit.fit_check): held-out rows,
each accepted by the filter calibrated without it.
"""

from __future__ import annotations

from semcal.fit.fit_results import FitResults, LabelCheck
from semcal.reports.numbers import format_number, format_percent


def fit_report_markdown(results: FitResults) -> str:
    counts, config, share = results.counts, results.config, results.trusted_share
    low, high = share.interval
    auc_before, auc_after = results.two_sample_auc_before, results.two_sample_auc_after
    lines = [f"# semcal fit: filter {results.filter}", ""]
    if results.advice:
        lines += ["## Read this first", ""] + [f"- **{warning}**" for warning in results.advice] + [""]
    lines += [
        "## What the filter does",
        "",
        f"It passes {format_percent(results.pass_rate_target, sign=True)} of the stream (M = {format_number(results.M)}, from "
        f"{results.pass_rate_from}); on held-out stream texts it passed {format_percent(results.pass_rate_heldout_stream, sign=True)}"
        ". Expect that share on new texts from the same stream.",
        "",
        f"- trusted corpus `{config['real']}`: {counts.real} texts, {counts.real_heldout} held out",
        f"- stream sample `{config['general']}`: {counts.general} texts, {counts.general_heldout} held out",
        f"- {format_percent(results.overlap_share, sign=True)} of the trusted texts are also in the stream sample; a text in both "
        "is held out on both sides or on neither.",
        "",
        "Every number below is measured on held-out texts, each accepted by the filter calibrated without it: "
        "no model that produced a number saw the text it was measured on.",
        "",
        "## How much of the stream looks trusted",
        "",
        f"Estimated trusted share of the stream: **{format_percent(share.estimate, sign=True)}** ({round(100 * share.level)}% "
        f"interval {format_percent(low, sign=True)} to {format_percent(high, sign=True)}; {share.method}). That is the share of the stream the "
        "trusted corpus could have been drawn from: the most a filter can pass while what it passes still looks "
        "trusted. A pass rate above it lets unlike texts through; one far below it keeps only the most "
        "trusted-looking texts.",
        "",
        _rate_against_share(results.pass_rate_target, share.estimate, low, high),
        "",
        "## Is the filter worth using?",
        "",
        "A classifier tries to tell held-out trusted texts from held-out stream texts (out-of-fold ROC AUC of a "
        "TF-IDF logistic regression): 0.5 means it cannot, 1.0 means it always can.",
        "",
        "| stream | AUC |",
        "| --- | --- |",
        f"| as it is | {format_number(auc_before, 3)} |",
        f"| as the filter passes it (weighted by acceptance) | {format_number(auc_after, 3)} |",
        "",
        _verdict(auc_before, auc_after),
        f"The accepted stream keeps {format_percent(results.effective_sample_share, sign=True)} of its texts' worth of information "
        "(Kish's effective sample size, (Σa)² / (n Σa²)).",
    ]
    if results.labels is not None:
        lines += _label_lines(results.labels)
    lines += _decision_lines(config["output"])
    from semcal.reports import item_report  # it formats with semcal.reports.report's helpers

    lines += item_report.per_item_lines(results.per_item, results.filter)
    for figure in results.figures:
        lines += ["", f"![{figure}]({figure})"]
    return "\n".join(lines) + "\n"


def _rate_against_share(rate: float, estimate: float, low: float, high: float) -> str:
    if rate > high:
        return (
            f"The pass rate ({format_percent(rate, sign=True)}) is above the trusted share: part of what passes is unlike the trusted "
            f"corpus. Fit with --pass_rate={estimate:.2f} to pass only trusted-like texts."
        )
    if rate < low:
        return (
            f"The pass rate ({format_percent(rate, sign=True)}) is below the trusted share: the filter keeps the most trusted-looking "
            "part of the trusted-like texts, a narrower mix than the trusted corpus."
        )
    return f"The pass rate ({format_percent(rate, sign=True)}) is within the trusted share's interval: the filter can pass what looks trusted."


def _verdict(auc_before: float, auc_after: float) -> str:
    if auc_before != auc_before or auc_after != auc_after:
        return "The classifier test could not be run (too few held-out texts on one side)."
    gained = (auc_before - 0.5) - abs(auc_after - 0.5)
    if gained <= 0.02:
        return "Filtering does not bring the stream closer to the trusted corpus here: it is not worth using as fitted."
    return (
        f"Filtering removes {format_percent(gained / max(auc_before - 0.5, 1e-9), 0, sign=True)} of the classifier's margin over "
        "chance: the passed stream is much harder to tell from the trusted corpus than the stream itself."
    )


def _label_lines(labels: LabelCheck) -> list[str]:
    lines = [
        "",
        "## Labels (held-out rows)",
        "",
        f"KL(stream‖trusted) = {format_number(labels.kl_before)} → KL(accepted‖trusted) = "
        f"{format_number(labels.kl_after)} (expected over the acceptance; ε = {labels.kl_epsilon}): "
        f"deception reduction **{format_percent(labels.deception_reduction, sign=True)}**, the share of the stream's label "
        "distortion the filter removes.",
        "",
        "| label | trusted | stream | accepted |",
        "| --- | --- | --- | --- |",
    ]
    dist = labels.distributions
    for label in sorted(dist.real, key=lambda name: -dist.real[name]):
        lines.append(
            f"| {label} | {format_number(dist.real[label], 3)} | {format_number(dist.stream[label], 3)} | "
            f"{format_number(dist.accepted[label], 3)} |"
        )
    return lines


def _decision_lines(folder: str) -> list[str]:
    apply = f"semcal filter --filter={folder} --input=NEW_TEXTS --output=decisions.csv"
    return [
        "",
        "## Applying it",
        "",
        f"`{apply}` writes one decision per text. Choose the decision mode by what the decisions are for:",
        "",
        "- `--decision=sample` (default): a seeded draw below each text's acceptance. What passes follows the "
        "trusted distribution; use it to measure or to feed a model with a calibrated stream.",
        "- `--decision=threshold`: pass the texts whose acceptance is above the fit's threshold for the pass rate "
        "(or `--max_false_rejection`). Repeatable and auditable; it keeps the most trusted-looking texts, which "
        "is narrower than the trusted distribution.",
        "- `--decision=top`: the most trusted-looking share of each window of texts, for an exact pass rate on a "
        "stream that moves.",
    ]
