"""``hope-attr``: expand a saved network into its Taylor polynomial, or discover its function.

    hope-attr expand MODEL --order 10 --point 0,0 [--latex] [--json OUT] [--around-zero]
    hope-attr discover MODEL --point 0,0 --radius 1 --num 30 --order 4

``MODEL`` is ``package.module:factory`` (a function or class returning the ``nn.Module``), with
``--state-dict PATH`` for its weights (loaded with ``weights_only=True``: no code runs), or a
file saved with ``torch.save(model)`` together with ``--trust-pickle`` (unpickling runs code: only
for files you trust).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

import torch
from torch import nn

from hope_attr.polynomial import discover, expand


def load_model(spec: str, state_dict: str | None = None, trust_pickle: bool = False) -> nn.Module:
    """Build the model named by ``spec`` (see the module docstring), in eval mode."""
    if ":" in spec and not spec.endswith((".pt", ".pth")):
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
    if not trust_pickle:
        raise SystemExit(
            f"refusing to unpickle {spec}: a pickled model can run arbitrary code when loaded. "
            "Pass module.path:factory with --state-dict, or add --trust-pickle if you trust it."
        )
    model = torch.load(spec, weights_only=False)
    if isinstance(model, torch.jit.ScriptModule):
        raise SystemExit(
            "TorchScript models cannot be traced by torch.fx; pass module.path:factory with "
            "--state-dict instead"
        )
    return model.eval()


def _point(text: str) -> torch.Tensor:
    try:
        return torch.tensor([float(v) for v in text.split(",")], dtype=torch.float64)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--point must be numbers like 0,0.5 ({error})") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hope-attr", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("expand", "print the Taylor polynomial at a point"),
        ("discover", "expand around many points and aggregate the terms"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("model", help="package.module:factory, or a torch.save file")
        command.add_argument("--state-dict", help="weights for module:factory models")
        command.add_argument(
            "--trust-pickle",
            action="store_true",
            help="allow unpickling a full model file (runs code)",
        )
        command.add_argument("--point", type=_point, required=True, help="e.g. 0,0")
        command.add_argument("--order", type=int, default=4)
        command.add_argument("--threshold", type=float, default=1e-3)
        command.add_argument("--output", type=int, default=0, help="output index to print")
        command.add_argument(
            "--around-zero", action="store_true", help="write powers of x instead of x - point"
        )
        command.add_argument("--names", help="comma-separated variable names")
    expand_command = commands.choices["expand"]
    expand_command.add_argument("--latex", action="store_true", help="also print LaTeX")
    expand_command.add_argument("--json", help="save the polynomial to this JSON file")
    discover_command = commands.choices["discover"]
    discover_command.add_argument("--radius", type=float, default=1.0)
    discover_command.add_argument("--num", type=int, default=30)
    discover_command.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    model = load_model(args.model, args.state_dict, args.trust_pickle).double()
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
