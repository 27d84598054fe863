"""Turn the command line's ``MODEL`` argument into an ``nn.Module``, running no code unasked.

Three kinds of ``MODEL`` are accepted:

* ``package.module:factory``: the user's own code, imported and called, with ``--state-dict``
  weights loaded with ``weights_only=True`` (tensors only: no code runs);
* a TorchScript file: TorchScript is code (its ``__setstate__`` runs when the file is loaded, its
  ``forward`` when the network is checked), so it needs the trust flag like a pickle does;
* a ``torch.save(model)`` pickle: unpickling runs code, so it needs the trust flag.

A file is always opened with ``weights_only=True`` first, which runs no code, so that a weights
file passed as the model is recognised and answered with the fix, with or without the flag.

Every refusal is a :class:`ModelError` (a ``ValueError``) whose message names the problem and
the fix; the command line prints it on one line.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import sys
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

TRUST_FLAG = "--trust-code"  # --trust-pickle, its old name, still works

_SAVE_WEIGHTS = (
    "save the weights instead (torch.save(model.state_dict(), 'weights.pt')) and pass "
    "package.module:factory --state-dict weights.pt"
)


class ModelError(ValueError):
    """``MODEL`` (or ``--state-dict``) cannot be turned into a network; the message says why."""


def load_model(
    spec: str,
    state_dict: str | None = None,
    trust_code: bool = False,
    example: torch.Tensor | None = None,
) -> nn.Module:
    """Build the model named by ``spec`` (see the module docstring), in eval mode.

    Args:
        spec: ``package.module:factory``, a TorchScript file or a ``torch.save`` file.
        state_dict: weights for ``package.module:factory``.
        trust_code: allow loading files that run code: TorchScript and pickles.
        example: inputs at which a network rebuilt from TorchScript must reproduce the
            TorchScript network (skipped when ``None``).

    Raises:
        ModelError: ``spec`` names no model, or one that would run code without
            ``trust_code``; the message says what to pass instead.

    Example:
        >>> from hope_attr.cli.model_loading import load_model
        >>> load_model("torch.nn:Tanh")
        Tanh()
    """
    path = Path(spec)
    if path.is_file():
        if state_dict is not None:
            raise ModelError(
                f"--state-dict is for MODEL given as package.module:factory, but {spec} is a "
                "file; pass the code that builds the network as package.module:factory"
            )
        return _load_file(spec, trust_code, example)
    if ":" in spec and not spec.endswith((".pt", ".pth")):
        return _from_factory(spec, state_dict)
    raise ModelError(
        f"MODEL {spec!r} is no file, nor package.module:factory (such as mymodels:Net for the "
        "class Net in ./mymodels.py)"
    )


def _from_factory(spec: str, state_dict: str | None) -> nn.Module:
    module_name, _, attribute = spec.partition(":")
    sys.path.insert(0, ".")  # let `hope-attr expand mymodels:Net` find ./mymodels.py
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelError(
            f"cannot import {module_name!r} of MODEL {spec} ({error}): the module must be "
            "installed or a .py file in the current directory"
        ) from None
    finally:
        sys.path.pop(0)
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelError(f"module {module_name!r} has no function or class {attribute!r}")
    try:
        model = factory()
    except TypeError as error:
        raise ModelError(
            f"{spec}() failed ({error}): the factory must build the network with no arguments; "
            "write a function that calls it with its settings"
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec}() returned a {type(model).__name__}, not an nn.Module")
    if state_dict is not None:
        weights = _read_weights(state_dict)
        if not isinstance(weights, Mapping):
            raise ModelError(
                f"--state-dict {state_dict} holds a {type(weights).__name__}, not a state dict: "
                "save it with torch.save(model.state_dict(), path)"
            )
        try:
            model.load_state_dict(weights)
        except (RuntimeError, TypeError, ValueError) as error:
            raise ModelError(f"the weights in {state_dict} do not fit {spec}(): {error}") from None
    return model.eval()


def _read_weights(path: str) -> object:
    """``torch.load(weights_only=True)``: tensors and containers only, no code."""
    if _is_torchscript(path):
        raise ModelError(f"--state-dict {path} is a TorchScript file, not weights: {_SAVE_WEIGHTS}")
    if not _is_torch_file(path):
        raise ModelError(f"--state-dict {path} is not a file torch.save wrote")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise ModelError(
            f"--state-dict {path} holds more than tensors (a pickled model?), and unpickling "
            f"runs code: {_SAVE_WEIGHTS}"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise ModelError(f"--state-dict {path} is not a file torch.save wrote ({error})") from None


def _load_file(spec: str, trust_code: bool, example: torch.Tensor | None) -> nn.Module:
    if _is_torchscript(spec):
        if not trust_code:
            raise ModelError(
                f"refusing to load {spec}: it is a TorchScript file, and TorchScript is code "
                "that runs when the file is loaded and when the network is evaluated. Add "
                f"{TRUST_FLAG} if you trust the file, or {_SAVE_WEIGHTS}"
            )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
            try:
                scripted = torch.jit.load(spec, map_location="cpu")
            except RuntimeError as error:
                raise ModelError(f"{spec} is not a valid TorchScript file ({error})") from None
        return _from_torchscript(scripted, example)
    if not _is_torch_file(spec):
        raise ModelError(f"{spec} is not a file torch.save or torch.jit.save wrote")
    try:
        # weights_only refuses every global outside an allow-list: this runs no code.
        content = torch.load(spec, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        content = None  # a pickle of more than tensors, such as a whole model
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise ModelError(
            f"{spec} is not a file torch.save or torch.jit.save wrote ({error})"
        ) from None
    if isinstance(content, Mapping):
        raise ModelError(
            f"{spec} holds weights only (a state dict), not a network: pass the code that builds "
            f"the network as package.module:factory with --state-dict {spec}"
        )
    if content is not None:
        raise ModelError(f"{spec} holds a {type(content).__name__}, not a network")
    if not trust_code:
        raise ModelError(
            f"refusing to unpickle {spec}: a pickled model can run arbitrary code when loaded. "
            "Pass package.module:factory with --state-dict, or add "
            f"{TRUST_FLAG} if you trust the file"
        )
    try:
        model = torch.load(spec, weights_only=False, map_location="cpu")
    except Exception as error:  # trusted code may fail in any way
        raise ModelError(
            f"unpickling {spec} failed ({_describe(error)}): a pickled model "
            "needs the code of its classes, importable under the names it was saved with; "
            f"better, {_SAVE_WEIGHTS}"
        ) from None
    if isinstance(model, torch.jit.ScriptModule):
        return _from_torchscript(model, example)
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec} holds a {type(model).__name__}, not an nn.Module")
    return model.eval()


def _is_torch_file(path: str) -> bool:
    """A zip archive (``torch.save``'s format since torch 1.6) or a pickle (the legacy format):
    anything else is refused by its first bytes, not reported as an unpickling failure."""
    try:
        with open(path, "rb") as file:
            head = file.read(2)
    except OSError:
        return False
    return head == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _is_torchscript(path: str) -> bool:
    """TorchScript archives carry ``<name>/code/`` and ``<name>/constants.pkl`` entries (torch
    itself goes by the latter); ``torch.save`` files have neither."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(
                name.split("/")[1:2] == ["code"] or name.split("/")[1:] == ["constants.pkl"]
                for name in archive.namelist()
            )
    except (OSError, zipfile.BadZipFile):
        return False


def evaluate(model: nn.Module, point: torch.Tensor) -> torch.Tensor:
    """``model(point[None])``, or a :class:`ModelError` saying the point does not fit the model.

    The usual cause is a ``--point`` with the wrong number of entries, which would otherwise
    surface as a matrix-shape error from deep inside the expansion.
    """
    with torch.no_grad():
        try:
            output = model(point[None])
        except Exception as error:  # any failure here: the point does not fit
            raise ModelError(
                f"the model cannot be evaluated at --point, a (1, {point.numel()}) input "
                f"({_describe(error)}); --point needs one number per input feature of the model"
            ) from None
    if not isinstance(output, torch.Tensor) or output.dim() == 0 or len(output) != 1:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelError(
            f"the model maps a (1, {point.numel()}) input to {shape}; hope-attr expands models "
            "that return one tensor with the batch first"
        )
    return output


def _describe(error: Exception) -> str:
    """``Type: message`` on one line, without the TorchScript interpreter's traceback (whose
    last line is already ``Type: message``)."""
    message = str(error)
    if "Traceback of TorchScript" in message:
        return [line for line in message.splitlines() if line.strip()][-1].strip()
    return f"{type(error).__name__}: {' '.join(message.split())}"


def _from_torchscript(scripted: torch.jit.ScriptModule, example: torch.Tensor | None) -> nn.Module:
    """The eager ``torch.nn`` network a TorchScript one was made from, checked at ``example``."""
    model = _rebuild(scripted, "the model").eval()
    if example is not None:
        scripted = scripted.eval().double()  # our own copy, loaded from the file
        evaluate(scripted, example[0])
        with torch.no_grad():
            _check_rebuilt(model.double(), scripted, example.double(), "the model")
    return model


def _rebuild(scripted: torch.jit.ScriptModule, where: str) -> nn.Module:
    name = scripted.original_name
    module_type = getattr(nn, name, None)
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise ModelError(
            f"{where} is a TorchScript {name!r}, not a torch.nn module: its forward is "
            f"TorchScript code, which jets cannot run through. Only torch.nn modules in "
            f"nn.Sequential containers can be rebuilt; for other models, {_SAVE_WEIGHTS}."
        )
    if module_type is nn.Sequential:
        children = {
            key: _rebuild(child, f"{where}[{key}]") for key, child in scripted.named_children()
        }
        return nn.Sequential(OrderedDict(children))
    if any(True for _ in scripted.children()):
        raise ModelError(
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
            raise ModelError(
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
        raise ModelError(
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
        raise ModelError(
            f"{where} (TorchScript {scripted.original_name}) could not be rebuilt: the eager "
            f"{type(model).__name__} built from the file's settings computes something else "
            "(a traced module keeps no settings, such as a slope or a stride). Save it with "
            f"torch.jit.script, or {_SAVE_WEIGHTS}."
        )
