"""``hope-attr``: expand a saved network into its Taylor polynomial, or discover its function.

    hope-attr expand MODEL --order 10 --point 0,0 [--latex] [--json OUT] [--around-zero]
    hope-attr discover MODEL --point 0,0 --radius 1 --num 30 --order 4

``MODEL`` is one of:

* ``package.module:factory`` (a function or class returning the ``nn.Module``), with
  ``--state-dict PATH`` for its weights (loaded with ``weights_only=True``: no code runs);
* a TorchScript file (``torch.jit.script(model).save(path)``) of standard ``torch.nn`` modules in
  ``nn.Sequential`` containers (MLPs, CNNs). torch.fx cannot trace TorchScript code, so the
  network is rebuilt as the equivalent eager modules from the file's module types, settings and
  weights, and checked against the TorchScript network at ``--point`` before it is expanded;
* a file saved with ``torch.save(model)`` together with ``--trust-pickle`` (unpickling runs code:
  only for files you trust).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from hope_attr.polynomial import discover, expand


def load_model(
    spec: str,
    state_dict: str | None = None,
    trust_pickle: bool = False,
    example: torch.Tensor | None = None,
) -> nn.Module:
    """Build the model named by ``spec`` (see the module docstring), in eval mode.

    Args:
        spec: ``package.module:factory``, a TorchScript file or a ``torch.save`` file.
        state_dict: weights for ``package.module:factory``.
        trust_pickle: allow unpickling a ``torch.save`` file (runs code).
        example: inputs at which a network rebuilt from TorchScript must reproduce the
            TorchScript network (skipped when ``None``).
    """
    if ":" in spec and not Path(spec).exists() and not spec.endswith((".pt", ".pth")):
        module_name, _, attribute = spec.partition(":")
        sys.path.insert(0, ".")  # let `hope-attr expand mymodels:Net` find ./mymodels.py
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        finally:
            sys.path.pop(0)
        model = factory()
        if state_dict is not None:
            model.load_state_dict(torch.load(state_dict, weights_only=True))
        return model.eval()
    if _is_torchscript(spec):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
            scripted = torch.jit.load(spec, map_location="cpu")
        return _from_torchscript(scripted, example)
    if not trust_pickle:
        raise SystemExit(
            f"refusing to unpickle {spec}: a pickled model can run arbitrary code when loaded. "
            "Pass module.path:factory with --state-dict, or a TorchScript file, or add "
            "--trust-pickle if you trust it."
        )
    model = torch.load(spec, weights_only=False)
    if isinstance(model, torch.jit.ScriptModule):
        return _from_torchscript(model, example)
    return model.eval()


def _is_torchscript(path: str) -> bool:
    """TorchScript archives carry their code under ``<name>/code/``; torch.save files do not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


_SAVE_WEIGHTS = (
    "save the weights instead (torch.save(model.state_dict(), 'weights.pt')) and pass "
    "package.module:factory --state-dict weights.pt"
)


def _from_torchscript(scripted: torch.jit.ScriptModule, example: torch.Tensor | None) -> nn.Module:
    """The eager ``torch.nn`` network a TorchScript one was made from, checked at ``example``."""
    model = _rebuild(scripted, "the model").eval()
    if example is not None:
        scripted = scripted.eval().double()  # our own copy, loaded from the file
        with torch.no_grad():
            _check_rebuilt(model.double(), scripted, example.double(), "the model")
    return model


def _rebuild(scripted: torch.jit.ScriptModule, where: str) -> nn.Module:
    name = scripted.original_name
    module_type = getattr(nn, name, None)
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise SystemExit(
            f"{where} is a TorchScript {name!r}, not a torch.nn module: its forward is "
            f"TorchScript code, which torch.fx cannot trace. Only torch.nn modules in "
            f"nn.Sequential containers can be rebuilt; for other models, {_SAVE_WEIGHTS}."
        )
    if module_type is nn.Sequential:
        children = {
            key: _rebuild(child, f"{where}[{key}]") for key, child in scripted.named_children()
        }
        return nn.Sequential(OrderedDict(children))
    if any(True for _ in scripted.children()):
        raise SystemExit(
            f"{where} is a TorchScript {name} with submodules, which cannot be rebuilt from "
            f"TorchScript; {_SAVE_WEIGHTS}."
        )
    weights = scripted.state_dict()
    arguments = {}
    for argument, parameter in inspect.signature(module_type.__init__).parameters.items():
        if argument in ("self", "device", "dtype") or parameter.kind in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        ):
            continue
        if argument == "bias" and isinstance(parameter.default, bool):
            arguments[argument] = weights.get("bias") is not None  # a flag, stored as a tensor
        elif hasattr(scripted, argument):
            arguments[argument] = getattr(scripted, argument)
        elif argument in ("in_features", "out_features") and "weight" in weights:
            # Traced (not scripted) Linear layers keep their weights but not these constants.
            arguments[argument] = weights["weight"].shape[argument == "in_features"]
        elif parameter.default is parameter.empty:
            raise SystemExit(
                f"{where} is a TorchScript {name} whose setting {argument!r} the file does not "
                "keep (torch.jit.trace drops module settings; torch.jit.script keeps them): "
                f"save it with torch.jit.script, or {_SAVE_WEIGHTS}."
            )
    try:
        module = module_type(**arguments)
        floating = [t for t in weights.values() if t.is_floating_point()]
        if floating:
            module = module.to(floating[0].dtype)  # load float64 weights without rounding them
        module.load_state_dict(weights)
    except (TypeError, ValueError, RuntimeError) as error:
        raise SystemExit(
            f"{where} is a TorchScript {name} that could not be rebuilt from the file's "
            f"settings ({error}); {_SAVE_WEIGHTS}."
        ) from None
    return module


def _check_rebuilt(
    model: nn.Module, scripted: torch.jit.ScriptModule, x: torch.Tensor, where: str
) -> None:
    """Raise, naming the first module that differs, unless ``model`` computes ``scripted``."""
    if isinstance(model, nn.Sequential):
        for (key, child), scripted_child in zip(
            model.named_children(), scripted.children(), strict=True
        ):
            _check_rebuilt(child, scripted_child, x, f"{where}[{key}]")
            x = scripted_child(x)
        return
    expected, found = scripted(x), model(x)
    if expected.shape != found.shape or not torch.allclose(found, expected, rtol=1e-9, atol=1e-12):
        raise SystemExit(
            f"{where} (TorchScript {scripted.original_name}) could not be rebuilt: the eager "
            f"{type(model).__name__} built from the file's settings computes something else "
            "(a traced module keeps no settings, such as a slope or a stride). Save it with "
            f"torch.jit.script, or {_SAVE_WEIGHTS}."
        )


def _point(text: str) -> torch.Tensor:
    try:
        return torch.tensor([float(v) for v in text.split(",")], dtype=torch.float64)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--point must be numbers like 0,0.5 ({error})") from None


def _parser() -> argparse.ArgumentParser:
    summary = __doc__.split("\n\n")[0].replace("``", "")  # plain text, not reStructuredText
    parser = argparse.ArgumentParser(prog="hope-attr", description=summary)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("expand", "print the Taylor polynomial at a point"),
        ("discover", "expand around many points and aggregate the terms"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument(
            "model", help="package.module:factory, a TorchScript file, or a torch.save file"
        )
        command.add_argument("--state-dict", help="weights for module:factory models")
        command.add_argument(
            "--trust-pickle",
            action="store_true",
            help="allow unpickling a full model file (runs code)",
        )
        command.add_argument("--point", type=_point, required=True, help="e.g. 0,0")
        command.add_argument("--order", type=int, default=4, help="highest degree (default 4)")
        command.add_argument(
            "--threshold",
            type=float,
            default=1e-3,
            help="hide terms whose |coefficient| is below this (default 1e-3)",
        )
        command.add_argument("--output", type=int, default=0, help="output index to print")
        command.add_argument(
            "--around-zero", action="store_true", help="write powers of x instead of x - point"
        )
        command.add_argument("--names", help="comma-separated variable names")
    expand_command = commands.choices["expand"]
    expand_command.add_argument("--latex", action="store_true", help="also print LaTeX")
    expand_command.add_argument("--json", help="save the polynomial to this JSON file")
    discover_command = commands.choices["discover"]
    discover_command.add_argument(
        "--radius", type=float, default=1.0, help="sample points within this distance (default 1)"
    )
    discover_command.add_argument(
        "--num", type=int, default=30, help="how many expansion points (default 30)"
    )
    discover_command.add_argument(
        "--seed", type=int, default=0, help="random seed of the sampled points (default 0)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Where a TorchScript network is rebuilt, it must agree at the point and around it.
    generator = torch.Generator().manual_seed(0)
    nearby = args.point + 0.1 * torch.randn(4, args.point.numel(), generator=generator)
    example = torch.cat([args.point[None], nearby])
    model = load_model(args.model, args.state_dict, args.trust_pickle, example).double()
    names = args.names.split(",") if args.names else None
    if args.command == "expand":
        poly = expand(model, args.point, args.order, names=names)
        for value, monomial in poly.terms(args.threshold, args.output, args.around_zero):
            print(f"{value:+.6g}  {monomial}")
        if args.latex:
            print(
                poly.to_latex(
                    output=args.output,
                    around_zero=args.around_zero,
                    threshold=args.threshold,
                    digits=4,
                )
            )
        if args.json:
            poly.save(args.json)
            print(f"saved {args.json}")
        return 0
    found = discover(model, args.point, args.radius, args.num, args.order, args.seed, names)
    rows = found.terms(args.threshold, args.output, args.around_zero)
    print(json.dumps([{"term": t, "mean": m, "spread": s} for m, s, t in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
