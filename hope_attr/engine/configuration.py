"""What this installation runs with: :func:`show_config`."""

from __future__ import annotations

import dataclasses
import platform
import sys
from importlib import metadata

import torch

from hope_attr.engine import native, resources

__all__ = ["show_config"]


def show_config(file: object = None) -> str:
    """Print (and return) versions, the resource policy in force and whether the compiled series
    kernel is active, with the reason where it is not.

    Args:
        file: where to print (default ``sys.stdout``); ``False`` prints nothing.

    Returns:
        The text printed.

    Example:
        >>> import hope_attr
        >>> text = hope_attr.show_config(file=False)
        >>> "compiled series kernel:" in text
        True
    """
    lines = [f"hope_attr {_version('hope_attr')}"]
    lines.append(f"python {platform.python_version()} ({platform.platform()})")
    lines.append(f"torch {torch.__version__}, captum {_version('captum')}")
    cuda = torch.cuda.is_available()
    device = f"available, {torch.cuda.get_device_name()}" if cuda else "not available"
    lines.append(f"cuda: {device}")
    lines.append(f"torch intra-op threads: {torch.get_num_threads()}")
    lines.append(f"compiled series kernel: {native.status()}")
    policy = resources.current()
    lines.append("resource policy (hope_attr.Resources, this thread):")
    lines.extend(
        f"  {item.name} = {getattr(policy, item.name)!r}" for item in dataclasses.fields(policy)
    )
    text = "\n".join(lines)
    if file is not False:
        print(text, file=file or sys.stdout)
    return text


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "(not installed)"
