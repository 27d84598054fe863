"""``hope-attr``: expand a saved network into its Taylor polynomial, or discover its function.

    hope-attr expand MODEL --order 10 --point 0,0 [--latex] [--json OUT] [--around-zero]
    hope-attr discover MODEL --point 0,0 --radius 1 --num 30 --order 4

``MODEL`` is one of:

* ``package.module:factory`` (a function or class returning the ``nn.Module``), with
  ``--state-dict PATH`` for its weights (loaded with ``weights_only=True``: no code runs);
* a TorchScript file (``torch.jit.script(model).save(path)``) of standard ``torch.nn`` modules in
  ``nn.Sequential`` containers (MLPs, CNNs), together with ``--trust-code``: TorchScript is code,
  run when the file is loaded. Jets cannot run through TorchScript code, so the network is rebuilt
  as the equivalent eager modules from the file's module types, settings and weights, and
  checked against the TorchScript network at ``--point`` before it is expanded;
* a file saved with ``torch.save(model)`` together with ``--trust-code`` (unpickling runs code).

``--trust-pickle`` is the old name of ``--trust-code`` and still works.

Every mistake in the arguments ends the command with one ``error:`` line and exit status 2. The
parser is built, and ``--help`` answered, before torch is imported: torch takes seconds to load.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _point(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--point must be numbers like 0,0.5 ({error})") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(
            f"--point must be finite numbers, got {text}: derivatives at NaN or Inf are undefined"
        )
    return values


def _checked(kind: type, lowest: float, what: str) -> Callable[[str], int | float]:
    """An argparse type: ``kind(text)``, finite and ``>= lowest``."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(value) and value >= lowest):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return parse


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
            "--trust-code",
            "--trust-pickle",
            dest="trust_code",
            action="store_true",
            help="allow TorchScript and torch.save model files: loading them runs their code",
        )
        command.add_argument(
            "--point", type=_point, required=True, help="one number per input, e.g. 0,0"
        )
        command.add_argument(
            "--order",
            type=_checked(int, 1, "an integer >= 1"),
            default=4,
            help="highest degree (default 4)",
        )
        command.add_argument(
            "--threshold",
            type=_checked(float, 0.0, "a number >= 0"),
            default=1e-3,
            help="hide terms whose |coefficient| is below this (default 1e-3)",
        )
        command.add_argument(
            "--output",
            type=_checked(int, 0, "an integer >= 0"),
            default=0,
            help="which output to print, counted over the flattened outputs (default 0)",
        )
        command.add_argument(
            "--around-zero", action="store_true", help="write powers of x instead of x - point"
        )
        command.add_argument("--names", help="comma-separated variable names, one per input")
    expand_command = commands.choices["expand"]
    expand_command.add_argument("--latex", action="store_true", help="also print LaTeX")
    expand_command.add_argument("--json", help="save the polynomial to this JSON file")
    discover_command = commands.choices["discover"]
    discover_command.add_argument(
        "--radius",
        type=_checked(float, 0.0, "a number >= 0"),
        default=1.0,
        help="sample points within this distance (default 1)",
    )
    discover_command.add_argument(
        "--num",
        type=_checked(int, 0, "an integer >= 0"),
        default=30,
        help="how many expansion points (default 30)",
    )
    discover_command.add_argument(
        "--seed", type=int, default=0, help="random seed of the sampled points (default 0)"
    )
    return parser


def _names(text: str | None, count: int) -> list[str] | None:
    """The ``--names``, or a ``ValueError`` saying what is wrong with them."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if len(names) != count:
        raise ValueError(
            f"--names gives {len(names)} names for the {count} numbers of --point: give one "
            "name per input, e.g. --names " + ",".join(f"x{i + 1}" for i in range(count))
        )
    bad = [name for name in names if not name or any(c.isspace() for c in name)]
    if bad:
        raise ValueError(f"--names must be non-empty and without spaces, got {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--names must be distinct, got {text!r}")
    return names


def _output_index(output: int, shape: Sequence[int]) -> int | tuple[int, ...]:
    """``--output`` (a flat index) as the index :meth:`TaylorPolynomial.terms` takes."""
    count = math.prod(shape)
    if output >= count:
        raise ValueError(
            f"--output {output} is out of range: the model has {count} output"
            f"{'s' if count != 1 else ''} at this point (shape {tuple(shape)}), numbered 0 to "
            f"{count - 1}"
        )
    if len(shape) <= 1:
        return output
    index = []
    for size in reversed(shape):
        output, position = divmod(output, size)
        index.append(position)
    return tuple(reversed(index))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hope-attr`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Mistakes in the arguments raise ``SystemExit(2)`` after printing one ``error:`` line.

    Example:
        >>> from hope_attr.cli import main
        >>> main(["expand", "torch.nn:Tanh", "--point", "0", "--order", "3"])
        +1  x1
        -0.333333  x1^3
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    prog = f"{parser.prog} {args.command}"  # as argparse names the subcommand in its errors
    try:
        return _run(args)
    except KeyboardInterrupt:
        parser.exit(130, f"{prog}: interrupted\n")
    except Exception as error:
        if not _is_user_error(error):
            raise  # a defect: its traceback is what a bug report needs
        message = " ".join(str(error).split())  # torch's messages span lines
        parser.exit(2, f"{prog}: error: {message}\n")


def _is_user_error(error: Exception) -> bool:
    """Errors that mean a wrong argument, with a message that says which and how to fix it."""
    if isinstance(error, ValueError | TypeError | OSError):
        return True
    from hope_attr.engine.registry import TrainingModeError, UnsupportedOperationError

    return isinstance(error, UnsupportedOperationError | TrainingModeError)


def _run(args: argparse.Namespace) -> int:
    names = _names(args.names, len(args.point))  # before the slow imports
    if getattr(args, "json", None) and not Path(args.json).parent.is_dir():
        raise ValueError(f"--json {args.json}: the folder {Path(args.json).parent} does not exist")
    # torch, and the library built on it, only now that the arguments are known to be complete.
    import torch

    from hope_attr.cli.model_loading import evaluate, load_model
    from hope_attr.polynomial import discover, expand

    point = torch.tensor(args.point, dtype=torch.float64)
    model = load_model(args.model, args.state_dict, args.trust_code, _nearby(point)).double()
    output = _output_index(args.output, evaluate(model, point).shape[1:])
    if args.command == "expand":
        poly = expand(model, point, args.order, names=names)
        for value, monomial in poly.terms(args.threshold, output, args.around_zero):
            print(f"{value:+.6g}  {monomial}")
        if args.latex:
            latex = poly.to_latex(
                output=output, around_zero=args.around_zero, threshold=args.threshold, digits=4
            )
            print(latex)
        if args.json:
            try:
                poly.save(args.json)
            except OSError as error:
                raise ValueError(f"cannot write --json {args.json}: {error.strerror}") from None
            print(f"saved {args.json}")
        return 0
    found = discover(model, point, args.radius, args.num, args.order, args.seed, names)
    rows = found.terms(args.threshold, output, args.around_zero)
    print(json.dumps([{"term": t, "mean": m, "spread": s} for m, s, t in rows], indent=1))
    return 0


def _nearby(point: torch.Tensor) -> torch.Tensor:
    """The point and 4 points around it, where a network rebuilt from TorchScript must agree."""
    import torch

    generator = torch.Generator().manual_seed(0)
    nearby = point + 0.1 * torch.randn(4, point.numel(), generator=generator, dtype=point.dtype)
    return torch.cat([point[None], nearby])


if __name__ == "__main__":
    raise SystemExit(main())
