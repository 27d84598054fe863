"""The identity of an audit: method, model, data set and settings, as a store records it.

A store holds the maps of one (method, model, data set, settings); resuming it with anything else
would mix two runs' maps in one store. What is recorded:

* the **model's behaviour**: its module tree (types, structure and each module's options), a
  hash of its parameters and buffers, and its outputs on fixed probe inputs built from the data
  set's first input. Two models with equal weights but a different activation differ in the
  tree and the outputs; for a plain function (a lambda) the outputs and its qualified name are
  what there is. Outputs are compared with a tolerance, so that the same model on another device
  or thread count is recognised; everything else exactly;
* the **data set**: its length and a hash of its first, middle and last items;
* the method's class and public options, the target, the baselines, the extra arguments.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np
import torch
from captum.attr import Attribution
from torch import Tensor

from hope_attr.audit._batch import Plan, device_of, module_of, read_item

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_PROBE_VALUES = 32  # leading output values kept per probe, besides three summaries
# Outputs of the same model on another device, thread count or BLAS differ in the last bits;
# another model (another activation, other weights) differs in the leading digits.
_RTOL, _ATOL = 1e-4, 1e-6


def settings_of(attribution: Attribution, dataset: Any, plan: Plan) -> dict[str, Any]:
    """What must match for a folder's shards to belong to this run (JSON-serializable)."""
    first, _ = read_item(dataset, 0, plan.key, plan.label_key)
    method = type(attribution)
    return {
        "method": f"{method.__module__}.{method.__qualname__}",
        # Plain attributes capture the method's configuration (HOPE's order and method,
        # IntegratedGradients' multiply_by_inputs...).
        "method_options": {
            key: value
            for key, value in sorted(vars(attribution).items())
            if not key.startswith("_")  # private state (results of earlier calls), not settings
            and (isinstance(value, (bool, int, float, str)) or value is None)
        },
        "model": model_fingerprint(attribution, first),
        "dataset": dataset_fingerprint(dataset, plan.key, plan.label_key),
        "items": {"key": plan.key, "label_key": plan.label_key},
        "num_examples": plan.num_examples,
        "input_shape": list(first.shape),
        "map_dtype": str(first.dtype).replace("torch.", ""),
        "batch_size": plan.batch_size,
        "target": plan.target if not isinstance(plan.target, np.integer) else int(plan.target),
        "baselines": fingerprint(plan.baselines),
        "attribute_kwargs": {k: fingerprint(v) for k, v in sorted(plan.attribute_kwargs.items())},
    }


def model_fingerprint(attribution: Attribution, first: Tensor) -> dict[str, Any]:
    """The forward function's name, module tree, parameters and outputs on probe inputs.

    Raises:
        ValueError: the forward function gives different outputs for the same input (a model in
            training mode with dropout, say): its maps could be neither resumed nor checked.
    """
    forward_func = attribution.forward_func
    module = module_of(forward_func)
    name = getattr(forward_func, "__qualname__", type(forward_func).__qualname__)
    result: dict[str, Any] = {
        "callable": f"{getattr(forward_func, '__module__', '?')}.{name}",
        "modules": None,
        "parameters": None,
    }
    if module is not None:
        tree = [
            f"{path or '.'}: {type(sub).__module__}.{type(sub).__qualname__}"
            # Options as the module prints them, less addresses (which change every process).
            f"({_ADDRESS.sub('', sub.extra_repr())})"
            for path, sub in module.named_modules()
        ]
        result["modules"] = _digest("\n".join(tree).encode())
        result["module_types"] = _summary(module)
        digest = hashlib.sha256()
        for key, value in module.state_dict().items():
            digest.update(key.encode())
            digest.update(tensor_digest(value).encode())
        result["parameters"] = digest.hexdigest()[:16]
    probes = _probes(first).to(device_of(attribution))
    once, again = _outputs(forward_func, probes), _outputs(forward_func, probes)
    if not _close(once["values"], again["values"]):
        raise ValueError(
            "the model gives different outputs for the same input from call to call (a model in "
            "training mode with dropout? call model.eval()); the maps of an audit could be "
            "neither reproduced nor resumed"
        )
    result["probe_outputs"] = once
    return result


def dataset_fingerprint(dataset: Any, key: str | None, label_key: str | None) -> dict[str, Any]:
    """The data set's length and a hash of its first, middle and last items.

    Raises:
        ValueError: reading the first item twice gave different inputs (random transforms).
    """
    count = len(dataset)
    first = read_item(dataset, 0, key, label_key)
    if _item_digest(first) != _item_digest(read_item(dataset, 0, key, label_key)):
        raise ValueError(
            "dataset[0] gave a different input when read again: the data set applies random "
            "transforms (augmentation). An audit needs each example to be the same every time "
            "it is read: use the evaluation transforms."
        )
    digest = hashlib.sha256()
    for index in sorted({0, count // 2, count - 1}):
        item = first if index == 0 else read_item(dataset, index, key, label_key)
        digest.update(f"{index}:{_item_digest(item)};".encode())
    return {
        "length": count,
        "sample_items": sorted({0, count // 2, count - 1}),
        "sha256": digest.hexdigest()[:16],
    }


def tensor_digest(value: Tensor) -> str:
    value = value.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{value.dtype}{tuple(value.shape)}".encode())
    digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()[:16]


def fingerprint(value: Any) -> Any:
    """A JSON-serializable stand-in for an argument: tensors by their hash."""
    if isinstance(value, Tensor):
        return f"tensor {tuple(value.shape)} sha256:{tensor_digest(value)}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    return repr(value)


def differences(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"key: stored X, now Y"`` for each setting that differs (probe outputs with a tolerance)."""
    found = []
    for key in sorted(set(stored) | set(now)):
        old, new = stored.get(key), now.get(key)
        if key == "model" and isinstance(old, dict) and isinstance(new, dict):
            found += [f"model {detail}" for detail in _model_differences(old, new)]
        elif key == "dataset" and isinstance(old, dict) and isinstance(new, dict) and old != new:
            found.append(
                f"dataset: stored {old.get('length')} examples with items hash "
                f"{old.get('sha256')}, now {new.get('length')} examples with items hash "
                f"{new.get('sha256')} (another data set, or its items changed)"
            )
        elif old != new:
            found.append(f"{key}: stored {old!r}, now {new!r}")
    return found


def _model_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    found = []
    for key in ("callable", "modules", "parameters"):
        if old.get(key) != new.get(key):
            what = {"modules": "module tree", "parameters": "parameters and buffers"}.get(key, key)
            detail = f"{what}: stored {old.get(key)!r}, now {new.get(key)!r}"
            if key == "modules":
                detail += f" ({old.get('module_types')!r} -> {new.get('module_types')!r})"
            found.append(detail)
    before, after = old.get("probe_outputs") or {}, new.get("probe_outputs") or {}
    if before.get("shape") != after.get("shape") or not _close(
        before.get("values"), after.get("values")
    ):
        found.append(
            "outputs on the probe inputs: they differ beyond rounding (another function, or "
            "another model with the same weights)"
        )
    return found


def _probes(first: Tensor) -> Tensor:
    """Fixed inputs shaped like the data set's inputs: seeded uniform and normal noise.

    They depend on the inputs' shape and dtype only, not on the data, so that another data set
    is reported as such and not as another model. Integer inputs (token ids) get zeros, an id
    every vocabulary has.
    """
    if not first.is_floating_point():
        return torch.zeros((1, *first.shape), dtype=first.dtype)
    generator = torch.Generator().manual_seed(20240531)
    uniform = torch.rand(first.shape, generator=generator, dtype=torch.float64)
    normal = torch.randn(first.shape, generator=generator, dtype=torch.float64)
    return torch.stack([uniform, normal]).to(first.dtype)


def _outputs(forward_func: Any, probes: Tensor) -> dict[str, Any]:
    with torch.no_grad():
        output = forward_func(probes)
    if not isinstance(output, Tensor):
        return {"shape": None, "type": type(output).__name__, "values": None}
    flat = output.detach().double().cpu().reshape(len(probes), -1)
    generator = torch.Generator().manual_seed(7)
    signs = torch.randint(0, 2, (flat.shape[1],), generator=generator).double() * 2 - 1
    summaries = torch.stack([flat.sum(1), flat.abs().sum(1), flat @ signs], 1)
    values = torch.cat([flat[:, :_PROBE_VALUES], summaries], 1)
    return {"shape": list(output.shape), "values": values.tolist()}


def _close(first: Any, second: Any) -> bool:
    if first is None or second is None:
        return first is second
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape:
        return False
    scale = float(np.nanmax(np.abs(b))) if b.size and not np.isnan(b).all() else 0.0
    return bool(np.allclose(a, b, rtol=_RTOL, atol=_ATOL * max(scale, 1.0), equal_nan=True))


def _item_digest(item: tuple[Tensor, int | None]) -> str:
    return f"{tensor_digest(item[0])}/{item[1]}"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _summary(module: torch.nn.Module, limit: int = 160) -> str:
    """``Sequential(Linear, Tanh, Linear)``: the module types, for error messages."""
    children = [type(child).__name__ for child in module.children()]
    text = f"{type(module).__name__}({', '.join(children)})"
    return text if len(text) <= limit else text[: limit - 3] + "..."
