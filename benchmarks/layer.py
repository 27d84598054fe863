"""LayerHOPE on a BERT-size model's embedding layer against Captum's layer methods.

The model: ``transformers.BertForSequenceClassification`` with BERT-base's layer sizes (width
768, 12 heads, feed-forward 3072, vocabulary 30522) but 2 layers, default initialization (seed
0), float32, eval mode, called on 128 random token ids (batch 1). The layer: its embedding
module ``bert.embeddings``, output ``(1, 128, 768)``; one group per token (``layer_mask`` of shape
``(1, 128, 1)``), every token moved to the layer's output for ``[PAD]`` (id 0) everywhere.

Methods, each for one class (target 0) and for all classes:

* Captum's ``LayerFeatureAblation`` (``perturbations_per_eval`` 1, its default, and 16): all
  classes are one call per class;
* Captum's ``LayerIntegratedGradients``, 50 steps in one batch, from the all-``[PAD]`` input:
  one call per class;
* ``hope_attr.LayerHOPEAttribution``, ``method="exact"`` at orders 1, 2, 4 and
  ``"continuation"`` at order 4: all classes are one ``attribute_all_targets`` call.

Each cell is the smaller time of ``--rounds`` rounds (default 2) that call every method in turn,
so that a burst of load from other jobs hits them alike; the first round also pays for imports,
caches and the allocator's growth. Agreement is with
``LayerFeatureAblation`` for target 0: Spearman's rank correlation over the 128 tokens, and the
largest difference relative to its largest value.

Run (from the repository root, on a machine as quiet as you can find)::

    python benchmarks/layer.py --markdown benchmarks/results/layer.md

``--quick`` (a narrow BERT, 16 tokens; with ``--rounds 1 --classes 2`` a few seconds) is the
smoke test of ``tests/test_benchmarks_smoke.py``.
"""

from __future__ import annotations

import functools
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run as a script: this checkout's benchmarks and hope_attr
    sys.path.insert(0, str(ROOT))

from benchmarks import _harness  # noqa: E402

PAD = 0


def bert(quick: bool, classes: int) -> torch.nn.Module:
    """The 2-layer BERT-size classifier (a narrow one with ``quick``), seed 0, eval mode."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    sizes = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128} if quick else {}
    config = transformers.BertConfig(num_hidden_layers=2, num_labels=classes, **sizes)
    return transformers.BertForSequenceClassification(config).eval()


def methods(model: torch.nn.Module, classes: int) -> dict[str, tuple[Callable, Callable]]:
    """Per method: ``(one class, all classes)``, each a function of ``(ids, reference ids)``
    returning per-token attributions ``(B, T)`` (all classes: ``(B, C, T)``)."""
    from captum.attr import LayerFeatureAblation, LayerIntegratedGradients

    import hope_attr

    def logits(input_ids: Tensor) -> Tensor:
        return model(input_ids).logits

    layer = model.bert.embeddings

    def layer_arguments(ids: Tensor, reference: Tensor) -> dict[str, Any]:
        with torch.no_grad():
            baselines = layer(reference)
        return {
            "layer_baselines": baselines,
            "layer_mask": torch.arange(ids.shape[1])[None, :, None],
        }

    def every_class(one: Callable) -> Callable:
        return lambda ids, reference: torch.stack(
            [one(ids, reference, target) for target in range(classes)], 1
        )

    found: dict[str, tuple[Callable, Callable]] = {}
    for per_eval in (1, 16):
        ablation = LayerFeatureAblation(logits, layer)

        def ablate(ids, reference, target=0, ablation=ablation, per_eval=per_eval):  # noqa: ANN001, ANN202
            return ablation.attribute(
                ids, target=target, perturbations_per_eval=per_eval,
                **layer_arguments(ids, reference),
            )[..., 0]  # fmt: skip

        found[f"LayerFeatureAblation, perturbations_per_eval={per_eval}"] = (
            ablate, every_class(ablate)
        )  # fmt: skip
    integrated = LayerIntegratedGradients(logits, layer)

    def integrate(ids, reference, target=0):  # noqa: ANN001, ANN202
        return integrated.attribute(ids, reference, target=target, n_steps=50).sum(-1)

    found["LayerIntegratedGradients, 50 steps"] = (integrate, every_class(integrate))
    for method, order in (("exact", 1), ("exact", 2), ("exact", 4), ("continuation", 4)):
        hope = hope_attr.LayerHOPEAttribution(logits, layer, order=order, method=method)

        def one(ids, reference, hope=hope):  # noqa: ANN001, ANN202
            return hope.attribute(ids, target=0, **layer_arguments(ids, reference))[..., 0]

        def every(ids, reference, hope=hope):  # noqa: ANN001, ANN202
            return hope.attribute_all_targets(ids, **layer_arguments(ids, reference))[..., 0]

        found[f"LayerHOPE {method}, order {order}"] = (one, every)
    return found


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two 1-d tensors (ties broken by position)."""
    ranks = [v.argsort().argsort().double() for v in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def measure(quick: bool, tokens: int, classes: int, rounds: int) -> tuple[list[list[str]], str]:
    model = bert(quick, classes)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (1, tokens), generator=generator)
    reference = torch.full_like(ids, PAD)
    table = methods(model, classes)
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in table}
    values: dict[str, Tensor] = {}
    notes: dict[str, set[str]] = {name: set() for name in table}
    # Methods interleaved per round, so that a burst of load from other jobs hits them alike;
    # the smaller time of the rounds is kept (the first round also pays for imports, caches
    # and the allocator's growth).
    for _ in range(rounds):
        for name, (one, every) in table.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                one_s, _, values[name] = _harness.time_call(functools.partial(one, ids, reference))
                every_s, _, _ = _harness.time_call(functools.partial(every, ids, reference))
            times[name][0].append(one_s)
            times[name][1].append(every_s)
            notes[name].update(type(w.message).__name__ for w in caught)
            print(f"{name}: {one_s:.1f} s / {every_s:.1f} s", flush=True)
    reference_name = "LayerFeatureAblation, perturbations_per_eval=1"
    ablation = values[reference_name].detach()
    ablation_s, ablation_every_s = (min(t) for t in times[reference_name])
    rows = []
    for name, (one_times, every_times) in times.items():
        one_s, every_s = min(one_times), min(every_times)
        attributions = values[name].detach()
        relative = (attributions - ablation).abs().max() / ablation.abs().max()
        rows.append([
            name, f"{one_s:.1f}", f"{every_s:.1f}", f"{one_s / ablation_s:.2f}",
            f"{every_s / ablation_every_s:.2f}", f"{spearman(attributions[0], ablation[0]):.3f}",
            f"{relative:.1e}", ", ".join(sorted(notes[name])) or "-",
        ])  # fmt: skip
    return rows, reference_name


def main() -> None:
    arguments = _harness.parser(__doc__, quick="a narrow model, 16 tokens: a smoke test")
    arguments.add_argument("--tokens", type=int, default=128)
    arguments.add_argument("--classes", type=int, default=5)
    arguments.add_argument("--rounds", type=int, default=2, help="timed rounds (the min is kept)")
    args = arguments.parse_args()
    tokens = 16 if args.quick else args.tokens
    run = _harness.Run()
    started = time.strftime("%Y-%m-%d %H:%M")
    rows, reference = measure(args.quick, tokens, args.classes, args.rounds)
    header = [
        "method", "1 class [s]", f"{args.classes} classes [s]", "1 class / LFA",
        f"{args.classes} classes / LFA", "Spearman vs LFA", "max diff / max LFA", "warnings",
    ]  # fmt: skip
    model = "a narrow 2-layer BERT (--quick)" if args.quick else "a 2-layer BERT-size model"
    command = shlex.join(["python", "benchmarks/layer.py", *sys.argv[1:]])  # as it was run
    page = "\n".join([
        "## LayerHOPE on a BERT embedding layer vs Captum's layer methods",
        "",
        f"Generated by `{command}` on {started}: {model} "
        f"(`benchmarks/layer.py` says which), {tokens} token ids, batch 1, float32, one group "
        f"per token, every token moved to the embedding of `[PAD]`. Each cell: the smaller time "
        f"of {args.rounds} rounds that call every method in turn (a shared machine: see the load "
        "below); "
        f"{args.classes} classes: Captum's methods are called once per class, "
        "LayerHOPE once (`attribute_all_targets`). LFA: "
        f"{reference}, Captum's default; agreement is for target 0.",
        "",
        _harness.table(header, rows),
        "",
        f"{_harness.revision()}; {_harness.versions()}; {_harness.cpu_name()}; "
        f"{_harness.variables()}; {run.load_line()}.",
        "",
    ])  # fmt: skip
    print(page)
    _harness.save(args, page)


if __name__ == "__main__":
    main()
