"""One model at one point, ready to push jets through: validation, primal pass, chunks."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

import hope_attr.rules  # noqa: F401  (registers the built-in rules)
from hope_attr.engine import dispatch as _dispatch
from hope_attr.engine import memo as _memo
from hope_attr.engine import resources as _resources
from hope_attr.engine import reverse as _reverse
from hope_attr.engine import scope as _scope
from hope_attr.engine import sequential as _sequential
from hope_attr.engine import workspace as _workspace
from hope_attr.engine.factorials import check_order
from hope_attr.engine.jet import InputSeed, Jet
from hope_attr.engine.modules import check_eval_mode
from hope_attr.engine.stacklevel import user_stacklevel

# Budgets and switches come from the thread's resource policy (hope_attr.engine.resources), read
# once per expansion. A nonlinearity keeps about this many copies of its input's series at once:
_TEMPORARY_COPIES = 4
# The default chunk size comes from the primal pass: ``order`` coefficients of the largest
# activation per direction, an upper bound. Receptive-field windows
# (:mod:`hope_attr.engine.windows`)
# make the series of an input's one-feature directions far smaller than that, and a
# piecewise-linear network stores only the first order, so when the bound splits the directions
# into several chunks, the first chunk measures the series and sizes the others (resnet18 at
# 224 px, order 4, 196 superpixels: chunks of 1 direction by the bound, 5 as measured).


class Expansion:
    """A validated forward function at an expansion point, ready to push jets through.

    Internal to the package: :func:`unmixed_derivatives` and the attribution methods build on it.
    Results are normalized Taylor coefficients (see :mod:`hope_attr.engine.jet`).
    """

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        inputs: Tensor | tuple[Tensor, ...],
        order: int,
        additional_forward_args: Any = None,
        directions_per_chunk: int | None = None,
        select: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """Check ``forward_func`` and ``inputs``; run the primal pass.

        ``select`` maps outputs ``(L, B, *O)`` to the ones the caller wants ``(L, B, *O')`` (one
        target per example): the expansion then describes only those, and reverse mode
        (:mod:`hope_attr.engine.reverse`) needs one backward pass per output kept.
        """
        self.inputs: tuple[Tensor, ...] = inputs if isinstance(inputs, tuple) else (inputs,)
        self.extra = _format_additional_args(additional_forward_args)
        self.resources = _resources.current()
        if directions_per_chunk is None:
            directions_per_chunk = self.resources.directions_per_chunk
        _check_arguments(forward_func, self.inputs, order, directions_per_chunk)
        self.order = order
        self.forward_func = _dispatch.unwrap(forward_func)
        # A plain nn.Sequential without hooks runs its layers' forwards one after another,
        # skipping the per-module call machinery (a fifth of a small MLP's expansion; see
        # hope_attr.engine.sequential); anything else runs the model's own forward eagerly on
        # jets (hope_attr.engine.dispatch).
        self._layers = _sequential.sequential_layers(self.forward_func, self.inputs, self.extra)
        check_eval_mode(self.forward_func)
        largest = [0]
        self._activation_bytes = 0  # every value of the primal pass: what autograd would keep

        def observe(value: object) -> None:
            if isinstance(value, Tensor):
                largest[0] = max(largest[0], value.numel())
                self._activation_bytes += value.numel() * value.element_size()

        # On copies: a model whose first op works in place (ReLU(inplace=True)) must not change
        # the caller's tensors.
        output = self.run((*(x.clone() for x in self.inputs), *self.extra), observe)
        _check_output(output, self.inputs[0].shape[0])
        self._select = select
        self.model_output: Tensor = output  # before ``select``
        self.output: Tensor = output if select is None else select(output.unsqueeze(0))[0]
        self.chunk_given = directions_per_chunk is not None
        if directions_per_chunk is None:
            itemsize = self.inputs[0].element_size()
            per_direction = order * largest[0] * itemsize * _TEMPORARY_COPIES
            directions_per_chunk = self._directions_within_budget(per_direction)
        self.chunk_size = directions_per_chunk
        self._memo: _memo.PrimalMemo | None = None
        self._workspace: _workspace.Workspace | None = None
        self._reverse_tried = False  # reverse mode is decided (and run) once per expansion
        self._progress_credit = 0  # directions reverse mode reported before it gave up

    def unmixed_coefficients(self, on_chunk: Callable[[int], None] | None = None) -> list[Tensor]:
        """Per input, ``(n, B, *O, *I)``: coefficient ``k`` of ``out(x + t e_i)``.

        ``on_chunk`` is told how many directions each finished chunk held.
        """
        rows = self._reverse_rows(sum(x[0].numel() for x in self.inputs), on_chunk)
        if rows is not None:  # (K, B, *I) per input -> (n, B, *O, *I)
            return [
                self._first_order_only(row.movedim(0, 1).reshape(*self.output.shape, *x.shape[1:]))
                for row, x in zip(rows, self.inputs, strict=True)
            ]
        on_chunk = self._credited(on_chunk)
        results = []
        for position, x in enumerate(self.inputs):
            num_features = x[0].numel()
            result = self.output.new_zeros((self.order, *self.output.shape, num_features))
            for start, stop, probe in self._chunks(num_features, x.device, on_chunk):
                args = list(self.inputs)
                args[position] = Jet(x, None, self.order, InputSeed(start, stop))
                # (n, D, B, *O) -> (n, B, *O, D)
                result[..., start:stop] = self._propagate(args, stop - start, probe).movedim(1, -1)
            results.append(result.reshape(self.order, *self.output.shape, *x.shape[1:]))
        return results

    def directional_coefficients(
        self, directions: tuple[Tensor, ...], on_chunk: Callable[[int], None] | None = None
    ) -> Tensor:
        """``(n, D, B, *O)``: coefficient ``k`` of ``out(x + t v_d)``.

        ``directions[j]`` has shape ``(D, B, *I_j)``: component ``j`` of every direction, which
        may differ per example (a direction moves all inputs at once).
        """
        rows = self._reverse_rows(directions[0].shape[0], on_chunk)
        if rows is not None:  # sum over features of row (K, B, *I) times direction (D, B, *I)
            first = sum(
                torch.einsum("kbi,dbi->dbk", row.flatten(2), v.flatten(2))
                for row, v in zip(rows, directions, strict=True)
            )
            return self._first_order_only(first.reshape(first.shape[0], *self.output.shape))
        on_chunk = self._credited(on_chunk)
        chunks = []
        for start, stop, probe in self._chunks(
            directions[0].shape[0], directions[0].device, on_chunk
        ):
            args = [
                Jet(x, v[start:stop].unsqueeze(0), self.order)
                for x, v in zip(self.inputs, directions, strict=True)
            ]
            chunks.append(self._propagate(args, stop - start, probe))
        return torch.cat(chunks, dim=1)

    def _chunks(
        self, total: int, device: torch.device, on_chunk: Callable[[int], None] | None
    ) -> Iterator[tuple[int, int, _SeriesProbe | None]]:
        """``(start, stop, probe)`` of each chunk of ``total`` directions.

        Without a fixed ``directions_per_chunk``, the first of several chunks comes with a probe
        for the caller to propagate with; the series it saw size the other chunks (see the note
        on chunk sizes at the top of this module). ``on_chunk`` hears of each finished chunk.
        """
        chunk = self.chunk_size
        measure = not self.chunk_given and chunk < total
        # Every chunk runs the forward again: the first one records the primal values (and the
        # tables at them) for the others (hope_attr.engine.memo).
        policy = self.resources
        remember = chunk < total and policy.primal_memo
        self._memo = _memo.PrimalMemo(policy.memo_budget(device)) if remember else None
        # ... and keeps their largest buffers for the others (hope_attr.engine.workspace), but only
        # in chunks whose shapes repeat: full chunks after the probe, when there are two or more.
        # Kept buffers of a chunk that no other chunk matches only pin memory (one image of the
        # MNIST CNN at order 4 runs a probe of 113 directions and one of 668: 5-10% slower).
        keep = device.type == "cpu" and policy.workspace
        workspace = _workspace.Workspace(policy.workspace_budget_bytes) if keep else None
        full_before = False
        start = 0
        try:
            while start < total:
                stop = min(total, start + chunk)
                probe = _SeriesProbe() if measure and start == 0 else None
                full = probe is None and stop - start == chunk
                repeats = full and (full_before or stop + chunk <= total)
                self._workspace = workspace if repeats else None
                yield start, stop, probe
                full_before = full_before or full
                if self._memo is not None:
                    self._memo.recording = False
                if probe is not None:
                    measured = probe.bytes_per_direction * _TEMPORARY_COPIES
                    chunk = max(chunk, self._directions_within_budget(measured))
                if on_chunk is not None:
                    on_chunk(stop - start)
                start = stop
        finally:
            self._memo = None
            self._workspace = None

    def _reverse_rows(
        self, directions: int, on_chunk: Callable[[int], None] | None
    ) -> list[Tensor] | None:
        """Per input ``(K, B, *I)``: the gradients of the ``K`` outputs per example, where reverse
        mode gives this expansion exactly for less than jets along ``directions`` would cost
        (:mod:`hope_attr.engine.reverse`: a locally affine model, or order 1); else ``None``.

        Tried once per expansion (a later call keeps jets); ``on_chunk`` advances by the share of
        outputs done.
        """
        if self._reverse_tried:
            return None
        self._reverse_tried = True
        outputs = math.prod(self.output.shape[1:])
        if not self.resources.reverse_mode or not _reverse.pays(
            outputs, directions, chunked=self.chunk_size < directions
        ):
            return None
        if _reverse.has_backward_hooks(self.forward_func):
            return None
        affine, jvp, v = _reverse.probe(
            lambda args: self.run((*args, *self.extra)), self.inputs, self.order
        )
        if not (affine or self.order == 1):
            return None
        jvp = self._flat_outputs(jvp)
        batch = self.inputs[0].shape[0]
        # The backward passes keep the forward's values: slices of the batch bound that memory.
        per_example = max(1, self._activation_bytes // batch)
        examples = max(
            1, min(batch, self.resources.graph_budget(self.inputs[0].device) // per_example)
        )
        passes = outputs * -(-batch // examples)
        done = reported = 0

        def accept(k: int, part: slice, grads: list[Tensor]) -> bool:
            nonlocal done, reported
            if not _reverse.row_agrees(grads, [d[part] for d in v], jvp[part, k]):
                return False
            done += 1
            if on_chunk is not None:
                share = directions * done // passes
                on_chunk(share - reported)
                reported = share
            return True

        try:
            return _reverse.jacobian_rows(
                self.forward_func, self.inputs, self.extra, self._output_index(),
                self._flat_outputs(self.model_output), accept, examples,
            )  # fmt: skip
        except _reverse.Disagreement as reason:
            warnings.warn(
                f"hope_attr: this model is locally affine (or order=1), where one backward pass "
                f"per output would give the expansion, but {reason}. Using forward jets "
                "instead: exact, one pass per feature direction, slower.",
                _reverse.ReverseModeWarning,
                stacklevel=user_stacklevel(),
            )
            self._progress_credit = reported  # the jets' chunks must not count these again
            return None

    def _credited(self, on_chunk: Callable[[int], None] | None) -> Callable[[int], None] | None:
        """``on_chunk`` less the directions reverse mode already reported before giving up."""
        if on_chunk is None or not self._progress_credit:
            return on_chunk

        def report(count: int) -> None:
            credit = min(count, self._progress_credit)
            self._progress_credit -= credit
            if count > credit:
                on_chunk(count - credit)

        return report

    def _output_index(self) -> Tensor:
        """``(B, K)``: the flat index, in the model's output ``(B, *O)``, of each output kept."""
        shape = self.model_output.shape
        flat = math.prod(shape[1:])
        ids = torch.arange(flat, device=self.model_output.device).expand(shape[0], flat)
        return self._flat_outputs(ids.reshape(shape))

    def _flat_outputs(self, output: Tensor) -> Tensor:
        """The model's output ``(B, *O)`` -> the selected outputs ``(B, K)``."""
        if self._select is not None:
            output = self._select(output.unsqueeze(0))[0]
        return output.reshape(output.shape[0], -1)

    def _directions_within_budget(self, bytes_per_direction: int) -> int:
        """Directions per chunk whose series fit the policy's budgets on the inputs' device."""
        policy, device = self.resources, self.inputs[0].device
        fits = max(1, policy.series_budget(device) // max(bytes_per_direction, 1))
        if device.type == "cpu":
            # The temporaries of a chunk should stay in the CPU's caches and on the allocator's
            # reused heap, but not so few directions that the per-chunk overhead dominates.
            in_cache = policy.cpu_cache_budget_bytes // max(bytes_per_direction, 1)
            fits = min(fits, max(in_cache, policy.min_cache_chunk))
        return fits

    def _first_order_only(self, first: Tensor) -> Tensor:
        """``(n, *first.shape)``: ``first`` as order 1, zeros above (a locally affine model)."""
        result = self.output.new_zeros((self.order, *first.shape))
        result[0] = first
        return result

    def run(
        self, args: tuple[object, ...], observe: Callable[[object], None] | None = None
    ) -> object:
        """``forward_func(*args)`` where some args may be jets; ``observe`` sees values."""
        if self._layers is not None:
            return _sequential.run(self.forward_func, self._layers, args[0], observe)
        if not any(isinstance(a, Jet) for a in args):
            with torch.no_grad(), _sequential.observing(observe):
                return _dispatch.run(self.forward_func, args)
        return _dispatch.run(self.forward_func, args, observe)

    def _propagate(
        self, args: list[object], num_directions: int, probe: _SeriesProbe | None = None
    ) -> Tensor:
        with _scope.active(memo=self._memo, workspace=self._workspace):
            value = self.run((*args, *self.extra), probe)
        if isinstance(value, Jet):
            value.check_current()  # not outdated by an in-place change of an alias
            series = value.full_series()  # (n, D, B, *O)
            if self._select is None:
                return series
            selected = self._select(series.flatten(0, 1))
            return selected.reshape(*series.shape[:2], *selected.shape[1:])
        if isinstance(value, Tensor):
            # The output does not depend on the inputs: every coefficient is zero.
            return self.output.new_zeros((self.order, num_directions, *self.output.shape))
        raise TypeError(
            f"forward_func returned {type(value).__name__} on jets; it must return one tensor"
        )


class _SeriesProbe:
    """Observes a propagation: the most bytes any one direction's series took."""

    def __init__(self) -> None:
        self.bytes_per_direction = 1

    def __call__(self, value: object) -> None:
        if not isinstance(value, Jet) or value._series is None:
            return
        series = value._series  # dense (m, D, B|1, *S) or windows (m, D, B|1, C, *size)
        batch = value.primal.shape[0] if value.primal.dim() else 1
        per_direction = series[:, 0].numel() * (batch // series.shape[2]) * series.element_size()
        self.bytes_per_direction = max(self.bytes_per_direction, per_direction)


def directions_argument(
    directions_per_chunk: int | None, internal_batch_size: int | None
) -> int | None:
    """The chunk size a public function was given, under its name or its old one.

    ``internal_batch_size`` meant "feature directions per chunk" here, not what Captum means by it
    (examples times steps per forward pass), so it was renamed ``directions_per_chunk``; the old
    name still works, with a FutureWarning.
    """
    if internal_batch_size is None:
        return directions_per_chunk
    if directions_per_chunk is not None:
        raise TypeError("pass directions_per_chunk only: internal_batch_size is its old name")
    warnings.warn(
        "internal_batch_size is now called directions_per_chunk (how many feature directions "
        "are propagated at once; Captum's internal_batch_size means something else); the old "
        "name will be removed in a later release",
        FutureWarning,
        stacklevel=user_stacklevel(),
    )
    return internal_batch_size


def _format_additional_args(additional_forward_args: Any) -> tuple[Any, ...]:
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def _check_arguments(
    forward_func: object, inputs: tuple[Tensor, ...], order: object, directions_per_chunk: object
) -> None:
    if not callable(forward_func):
        raise TypeError(f"forward_func must be a model or a function, got {type(forward_func)}")
    first = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
    check_order(order, first.dtype if first is not None else None)
    if directions_per_chunk is not None and (
        isinstance(directions_per_chunk, bool)
        or not isinstance(directions_per_chunk, int)
        or directions_per_chunk < 1
    ):
        raise ValueError(
            f"directions_per_chunk must be a positive int, got {directions_per_chunk!r}"
        )
    if not inputs:
        raise ValueError("inputs is an empty tuple; pass a tensor or a tuple of tensors")
    batch = None
    for index, x in enumerate(inputs):
        name = "inputs" if len(inputs) == 1 else f"inputs[{index}]"
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"{name} has dtype {x.dtype}; derivatives need a floating-point input: "
                "convert with .float() or .double()"
            )
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(f"{name} must have a non-empty batch axis first, got {tuple(x.shape)}")
        if batch is not None and x.shape[0] != batch:
            raise ValueError(
                f"all inputs must share the batch size: {name} has {x.shape[0]}, "
                f"inputs[0] has {batch}"
            )
        batch = x.shape[0]
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or Inf; derivatives there are undefined")


def _check_output(output: object, batch: int) -> None:
    if not isinstance(output, Tensor):
        raise TypeError(f"forward_func must return one tensor (B, *O), got {_described(output)}")
    if not output.is_floating_point():
        raise TypeError(
            f"forward_func returned a {output.dtype} tensor; derivatives need a floating-point "
            "output: return the scores or logits before any argmax, rounding or cast to an "
            "integer or boolean type"
        )
    if output.dim() == 0 or output.shape[0] != batch:
        raise ValueError(
            f"forward_func returned shape {tuple(output.shape)}, but the derivatives are per "
            f"example: the output must keep the batch axis first (B = {batch}). A model that "
            "reduces over the batch couples examples."
        )


def _described(output: object) -> str:
    """What a model returned instead of one tensor, and the wrapper that picks one out."""
    kind = type(output).__name__
    if isinstance(output, Mapping) and output:  # torchvision's {"out", "aux"}, a ModelOutput
        keys = list(output)
        tensors = [k for k in keys if isinstance(output[k], Tensor)] or keys
        return (
            f"a {kind} with keys {', '.join(map(repr, keys))}; pass a function that picks the "
            f"output to explain, e.g. forward_func=lambda x: model(x)[{tensors[0]!r}]"
        )
    if isinstance(output, (tuple, list)) and output:
        return (
            f"a {kind} of {len(output)} values; pass a function that picks the output to "
            "explain, e.g. forward_func=lambda x: model(x)[0]"
        )
    return "None" if output is None else f"a {kind}"
