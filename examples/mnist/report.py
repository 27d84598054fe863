"""The tutorial's report: what one run found, as markdown with links to its figures.

:class:`Report` collects the results while ``tutorial.py`` runs and writes ``report.md``; every
number in it comes from that run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from selection import RANDOM, SelectionResult, selection_table, summary
from training import ARCHITECTURES
from warning_log import WarningLog

from benchmarks import attribution as harness

MAIN_MODEL, RELU_MODEL = "tanh-cnn", "relu-cnn"


def threads_text(count: int) -> str:
    """``"1 thread"``, ``"2 threads"``."""
    return f"{count} thread{'s' if count != 1 else ''}"


@dataclass(frozen=True)
class PaperComparison:
    """The paper's Fig. 7b reproduced: agreement with the perturbation, and the time taken."""

    path: Path
    spearman: dict[str, float]  # per HOPE variant, mean over the classes
    seconds: dict[str, float]  # all classes of one digit, median of 3 after a warm-up


@dataclass(frozen=True)
class Conservation:
    """LRP's relevance conservation and HOPE's completeness for one digit."""

    label: int
    output: float
    lrp_sum: float
    hope_sum: float
    output_drop: float


def conservation_table(rows: Sequence[Conservation], order: int) -> str:
    lines = [
        "| digit | label | f(x) | LRP sum R | LRP delta = sum R - f(x) | f(x) - f(0) "
        f"| HOPE n={order} sum | HOPE delta = sum - (f(x) - f(0)) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for index, row in enumerate(rows):
        lines.append(
            f"| {index} | {row.label} | {row.output:.3f} | {row.lrp_sum:.3f} "
            f"| {row.lrp_sum - row.output:.3g} | {row.output_drop:.3f} | {row.hope_sum:.3f} "
            f"| {row.hope_sum - row.output_drop:.3g} |"
        )
    return "\n".join(lines)


@dataclass
class Report:
    """Everything the report prints, collected during the run."""

    command: str
    data: str
    sizes: tuple[int, int]
    threads: int
    order: int
    accuracies: dict[str, tuple[float, bool, int]] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    paper: PaperComparison | None = None
    conservation: list[Conservation] = field(default_factory=list)
    benchmarks: dict[str, harness.BenchmarkResult] = field(default_factory=dict)
    selection: SelectionResult | None = None
    warning_log: WarningLog = field(default_factory=WarningLog)
    seconds: float = 0.0

    def markdown(self, outputs: Path) -> str:
        """The report as markdown; figure links are relative to ``outputs``."""
        return "\n\n".join(part for part in self._sections(outputs) if part)

    def _sections(self, outputs: Path) -> list[str]:
        mmap_max = os.environ.get("MALLOC_MMAP_MAX_")
        allocator = "glibc defaults" if mmap_max is None else f"MALLOC_MMAP_MAX_={mmap_max}"
        return [
            "# MNIST tutorial report: HOPE heat maps, benchmark, feature selection",
            f"Command: `{self.command}`; total run time {self.seconds:.0f} s; "
            f"torch threads: {self.threads}; allocator: {allocator}; "
            f"load average at the end: {os.getloadavg()[0]:.1f}. "
            "Every number below comes from this run; times vary between runs and machines, so "
            "compare them within one table.",
            f"## Data\n\n{self.data}: {self.sizes[0]} training and {self.sizes[1]} test digits "
            "(fixed seed).",
            self._models(),
            self._figures(outputs),
            self._paper(),
            self._conservation(),
            *self._benchmarks(),
            self._selection(),
            self.warning_log.markdown(),
        ]

    def _models(self) -> str:
        lines = ["## Models", "", "| model | layers | epochs | test accuracy | weights |"]
        lines.append("|---|---|---|---|---|")
        for name, (value, cached, epochs) in self.accuracies.items():
            source = "cache" if cached else "trained now"
            layers = ARCHITECTURES[name][0]
            lines.append(f"| {name} | {layers} | {epochs} | {100 * value:.1f}% | {source} |")
        return "\n".join(lines)

    def _figures(self, outputs: Path) -> str:
        links = [f"- [{path.stem}]({path.relative_to(outputs)})" for path in self.figures]
        return "## Figures\n\n" + "\n".join(links)

    def _paper(self) -> str:
        if self.paper is None:
            return ""
        agreement = ", ".join(f"{k}: {v:.4f}" for k, v in self.paper.spearman.items())
        seconds = ", ".join(f"{k}: {1000 * v:.1f} ms" for k, v in self.paper.seconds.items())
        return (
            "## The paper's heat map (Fig. 7b)\n\nEach pixel alone moved by dx = +1, all 10 "
            f"classes of test digit 0 ({MAIN_MODEL}). Mean Spearman correlation over the classes "
            f"with the perturbation maps: {agreement}. Time for all classes (median of 3 after "
            f"a warm-up): {seconds}."
        )

    def _conservation(self) -> str:
        if not self.conservation:
            return ""
        return (
            f"## LRP conservation next to HOPE completeness ({RELU_MODEL})\n\n"
            "LRP redistributes f(x) (ideally sum R = f(x)); HOPE predicts FeatureAblation, whose "
            "sum over pixels equals f(x) - f(0) only without interactions.\n\n"
            + conservation_table(self.conservation, self.order)
        )

    def _benchmarks(self) -> list[str]:
        sections = []
        for name, result in self.benchmarks.items():
            sections.append(
                f"## Benchmark: {name} ({result.images} test digits, target = label, "
                f"{threads_text(result.threads)})\n\n"
                "Agreement is with single-pixel FeatureAblation (baseline 0). "
                f"Infidelity removes a random {100 * harness.REMOVED_SHARE:.0f}% of the pixels; "
                "sensitivity_max uses "
                f"{result.budget.sensitivity_samples} perturbation(s) of radius 0.02. "
                "Delta: HOPE/IntegratedGradients/DeepLift/GradientShap sum - (f(x) - f(0)); "
                "LRP sum R - f(x). Settings: "
                + ", ".join(f"{k}={v}" for k, v in asdict(result.budget).items())
                + ".\n\n"
                + harness.markdown_table(result.rows)
            )
        return sections

    def _selection(self) -> str:
        if self.selection is None:
            return ""
        seconds = ", ".join(f"{k}: {v:.1f}" for k, v in self.selection.ranking_seconds.items())
        return (
            f"## Feature selection ({MAIN_MODEL})\n\nPixels ranked by mean |attribution| over "
            f"{self.selection.rank_images} training digits (each for its own label); test "
            "accuracy (%). Retrained: a small MLP (64 tanh units) trained from scratch, "
            f"{len(self.selection.retrained[RANDOM][0])} seeds per cell (mean ± standard "
            "deviation); the random control draws a new ranking per seed. A gap smaller than "
            "the spreads does not separate two methods.\n\n"
            f"**What it shows:** {summary(self.selection)}\n\n"
            "(a) The trained model, pixels outside the top k% set to 0 (inputs it never saw):"
            "\n\n"
            + selection_table(self.selection, "masked")
            + "\n\n(b) KAR, keep and retrain on the top k% pixels (higher is better):\n\n"
            + selection_table(self.selection, "retrained")
            + "\n\n(c) ROAR, remove the top k% pixels and retrain (lower is better):\n\n"
            + selection_table(self.selection, "removed")
            + f"\n\nWith all pixels: (a) {100 * self.selection.all_pixels[0]:.1f}%, "
            f"(b) {100 * self.selection.all_pixels[1]:.1f}%. Ranking time (s): {seconds}."
        )
