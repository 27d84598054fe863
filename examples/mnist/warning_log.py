"""HOPE's warnings during the tutorial: recorded for the report, summed up in one line per kind.

HOPE warns where a result needs care: ``ConvergenceWarning`` (some features move to a baseline
outside the estimated radius of convergence of their Taylor series) and
``PiecewiseLinearWarning`` (a ReLU/max-pooling model has no terms beyond order 1). The tutorial
calls HOPE hundreds of times inside progress bars; printed, every warning would break a bar and
echo a source line. :class:`WarningLog` records them instead, per stage and method; the report
explains them and the console gets one line per kind. Every other warning is still shown, when
its stage ends (not inside a progress bar). The warnings themselves are the library's behaviour:
nothing here silences them for other code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from benchmarks.attribution import Method
from hope_attr import ConvergenceWarning, PiecewiseLinearWarning

KINDS: tuple[type[Warning], ...] = (ConvergenceWarning, PiecewiseLinearWarning)
GIST = {
    "ConvergenceWarning": "a few pixels lie beyond the radius of convergence of their series",
    "PiecewiseLinearWarning": "the ReLU model has no terms beyond order 1",
}
"""One line per kind for the console."""
MEANING = {
    "ConvergenceWarning": (
        "For the pixels counted, the step from the pixel's value to its baseline is longer than "
        "the estimated radius of convergence of the model's Taylor series in that pixel: their "
        "order-n terms do not approach FeatureAblation, and more orders make them worse. The "
        "other pixels of the same call are unaffected. `method='continuation'` computes these "
        "pixels' ablations exactly; the message says how to get the estimate per pixel."
    ),
    "PiecewiseLinearWarning": (
        "The ReLU/max-pooling model is piecewise linear, so every term of order 2 and above is "
        "zero: HOPE of any order equals its first-order term, InputXGradient times "
        "(x - baseline), exact only up to the first kink between the pixel and the baseline. "
        "This is why the HOPE rows of the ReLU benchmark agree with each other; "
        "`method='continuation'` gives the ablations themselves."
    ),
}
"""What each kind means for the numbers of this tutorial, for the report."""
_FEATURES = re.compile(r"^(\d+) of (\d+) features")


@dataclass(frozen=True)
class Caught:
    """One warning: where it was raised (stage, method) and what it said."""

    stage: str
    method: str
    kind: str
    message: str


@dataclass
class WarningLog:
    """HOPE's warnings of a run, recorded by :meth:`stage` and summed up by :meth:`markdown`.

    Example:
        >>> log = WarningLog()
        >>> with log.stage("demo"):
        ...     warnings.warn("3 of 784 features move", ConvergenceWarning)
        >>> [(caught.stage, caught.kind) for caught in log.caught]
        [('demo', 'ConvergenceWarning')]
    """

    caught: list[Caught] = field(default_factory=list)
    _stage: str = ""
    _method: str = ""

    @contextlib.contextmanager
    def stage(self, name: str, method: str = "HOPE") -> Iterator[None]:
        """Record every HOPE warning raised in the block under ``name``.

        Every occurrence is recorded, not only the first of each text: the counts say how many
        calls warned. A warning raised inside an attribution of :meth:`labelled` methods is
        recorded under that method's name, any other under ``method``. Other warnings are shown
        when the block ends.
        """
        others: list[warnings.WarningMessage] = []

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            if issubclass(category, KINDS):
                kind = category.__name__
                self.caught.append(Caught(self._stage, self._method, kind, str(message)))
            else:
                others.append(warnings.WarningMessage(message, category, filename, lineno))

        with warnings.catch_warnings():
            for kind in KINDS:
                warnings.filterwarnings("always", category=kind)
            warnings.showwarning = show  # catch_warnings restores it
            self._stage, self._method = name, method
            try:
                yield
            finally:
                self._stage = self._method = ""
        for other in others:  # outside the progress bars, with the filters of the caller
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)

    def labelled(self, methods: Sequence[Method]) -> list[Method]:
        """``methods`` whose attributions record their warnings under the method's name."""
        return [dataclasses.replace(m, make=self._maker(m)) for m in methods]

    def _maker(self, method: Method) -> Any:
        def make(model: nn.Module) -> _Labelled:
            return _Labelled(method.make(model), method.name, self)

        return make

    def console_lines(self) -> list[str]:
        """At most one line per kind of warning, pointing to the report."""
        lines = []
        for kind in GIST:
            count = sum(caught.kind == kind for caught in self.caught)
            if count:
                lines.append(
                    f"note: {count} {kind}{'s' if count > 1 else ''} ({GIST[kind]}); "
                    'see "Warnings" in report.md'
                )
        return lines

    def markdown(self) -> str:
        """The report's section: a table per stage and method, then what each kind means."""
        if not self.caught:
            return "## Warnings\n\nHOPE raised no warning in this run."
        groups: dict[tuple[str, str, str], list[Caught]] = {}
        for caught in self.caught:
            groups.setdefault((caught.stage, caught.method, caught.kind), []).append(caught)
        lines = [
            "## Warnings",
            "",
            "HOPE's warnings of this run, recorded instead of printed into the progress bars. "
            "Calls: how many attribution calls warned (the benchmark calls each method once per "
            "digit, and again for the metrics); pixels: how many of each call's pixels, over "
            "the batch, the warning counts.",
            "",
            "| stage | method | warning | calls | pixels per call |",
            "|---|---|---|---|---|",
        ]
        for (stage, method, kind), found in groups.items():
            lines.append(f"| {stage} | {method} | {kind} | {len(found)} | {_counts(found)} |")
        for kind in dict.fromkeys(caught.kind for caught in self.caught):
            example = next(caught.message for caught in self.caught if caught.kind == kind)
            lines += ["", f"**{kind}.** {MEANING.get(kind, '')} One of them in full:", ""]
            lines.append(f"> {example}")
        return "\n".join(lines)


def _counts(found: Sequence[Caught]) -> str:
    """``"3-155 of 784-18816 (at most 0.82%)"``, or ``"-"`` for warnings that count none."""
    pairs = [m.groups() for m in (_FEATURES.match(c.message) for c in found) if m is not None]
    if not pairs:
        return "-"
    flagged = [int(a) for a, _ in pairs]
    totals = [int(b) for _, b in pairs]
    share = max(a / b for a, b in zip(flagged, totals, strict=True))

    def span(values: list[int]) -> str:
        return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"

    return f"{span(flagged)} of {span(totals)} (at most {100 * share:.2g}%)"


class _Labelled:
    """An attribution object whose ``attribute`` calls tag warnings with its method's name.

    Everything else (``multiplies_by_inputs``, ``has_convergence_delta``, ...) is the wrapped
    object's.
    """

    def __init__(self, attribution: Any, name: str, log: WarningLog) -> None:
        self._attribution, self._name, self._log = attribution, name, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attribution, name)

    def attribute(self, *args: Any, **kwargs: Any) -> Any:
        outer, self._log._method = self._log._method, self._name
        try:
            return self._attribution.attribute(*args, **kwargs)
        finally:
            self._log._method = outer
