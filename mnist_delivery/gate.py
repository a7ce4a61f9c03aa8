"""Champion/challenger: a candidate replaces the version serving now only if it is no worse,
by more than set margins, on the same fixed test sets measured through HTTP.

Rates are compared in percentage points (accuracy and out-of-distribution detection may not
drop by more than their margin, the clean false-positive rate may not rise by more than its
margin); single-image p99 latency as a ratio (both measured interleaved, so both saw the same
machine load), with an absolute slack below which a difference is scheduling noise, not the
model: on a shared machine one preempted request moves a p99 of a few milliseconds by more
than 1.5x (seen in the test suite: identical versions refused). With no version serving,
there is nothing to compare and only the absolute deployment checks apply."""

from __future__ import annotations

from dataclasses import dataclass

from mnist_delivery.acceptance import AcceptanceReport


@dataclass(frozen=True)
class Margins:
    accuracy_points: float = 0.5
    detection_points: float = 1.0
    false_positive_points: float = 1.0
    p99_ratio: float = 1.5
    p99_slack_ms: float = 5.0


@dataclass(frozen=True)
class Comparison:
    measure: str
    candidate: float
    production: float
    limit: float  # the worst value the candidate may have
    higher_is_better: bool

    @property
    def passed(self) -> bool:
        return self.candidate >= self.limit if self.higher_is_better else self.candidate <= self.limit


def compare(candidate: AcceptanceReport, production: AcceptanceReport, margins: Margins) -> list[Comparison]:
    """Each measure side by side, with the limit production's value and the margin set."""

    def rate(measure: str, attribute: str, points: float, higher_is_better: bool) -> Comparison:
        ours, theirs = getattr(candidate, attribute), getattr(production, attribute)
        limit = theirs - points / 100 if higher_is_better else theirs + points / 100
        return Comparison(measure, ours, theirs, limit, higher_is_better)

    p99 = production.latency_ms["p99"]
    return [
        rate("MNIST accuracy", "accuracy", margins.accuracy_points, True),
        rate("notMNIST detection", "notmnist_flag_rate", margins.detection_points, True),
        rate("noisy-digit detection", "noisy_flag_rate", margins.detection_points, True),
        rate("clean false-positive rate", "clean_flag_rate", margins.false_positive_points, False),
        Comparison(
            "single-image p99 (ms)",
            candidate.latency_ms["p99"],
            p99,
            max(p99 * margins.p99_ratio, p99 + margins.p99_slack_ms),
            False,
        ),
    ]


def markdown_table(comparisons: list[Comparison], candidate_version: str, production_version: str) -> str:
    """The comparison as a markdown table, for the asset's metadata."""
    rows = [
        f"| measure | candidate v{candidate_version} | production v{production_version} | limit | verdict |",
        "|---|---|---|---|---|",
    ]
    for c in comparisons:
        sign = ">=" if c.higher_is_better else "<="
        verdict = "ok" if c.passed else "**worse than allowed**"
        rows.append(f"| {c.measure} | {c.candidate:.4f} | {c.production:.4f} | {sign} {c.limit:.4f} | {verdict} |")
    return "\n".join(rows)
