"""Trace a forward function with ``torch.fx`` and run its graph on jets.

Tracing never touches the user's model: the graph module built here *refers* to the user's
submodules (no copies, no hooks, no flags changed), and everything it adds lives on a private root.
Modules with a registered rule stay single graph steps; all others are traced through, so their
``forward`` is handled by function rules.
"""

from __future__ import annotations

import contextlib
import operator
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from hope_attr.engine import registry as _registry
from hope_attr.engine.arithmetic import _replace, contains_jet, is_jet
from hope_attr.engine.jet import Jet

# Modules whose training-mode behaviour differs from eval: expanding them in training mode would
# differentiate a random mask or batch statistics.
_TRAIN_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


class TracedGraph:
    """A traced forward: the ``fx`` graph and the private root module its nodes refer to.

    Lighter than ``fx.GraphModule``, which would generate and compile Python code that the
    interpreter never runs.
    """

    def __init__(self, graph: fx.Graph, root: nn.Module) -> None:
        self.graph = graph
        self.root = root

    def get_submodule(self, target: str) -> nn.Module:
        return self.root.get_submodule(target)

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]:
        return self.root.named_modules()


class _Tracer(fx.Tracer):
    def __init__(self, record_stack_traces: bool) -> None:
        super().__init__()
        self.record_stack_traces = record_stack_traces
        self._external = 0

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _registry.module_rule(type(m)) is not None

    def create_arg(self, a: Any) -> Any:
        # A forward function may read parameters that belong to no traced module (a lambda over
        # `lin.weight`): give them a name on our own root, never the user's.
        if isinstance(a, nn.Parameter) and not any(a is p for p in self.root.parameters()):
            self.root.register_parameter(f"parameter{self._external}", a)
            self._external += 1
        return super().create_arg(a)

    def path_of_module(self, mod: nn.Module) -> str:
        # A forward function may call modules that are not attributes of anything we trace (a
        # lambda closing over a model): give them a name on our own root, never the user's.
        try:
            return super().path_of_module(mod)
        except NameError:
            name = f"module{self._external}"
            self._external += 1
            self.root.add_module(name, mod)
            if self.submodule_paths is not None:
                for sub_name, sub in mod.named_modules(prefix=name):
                    self.submodule_paths.setdefault(sub, sub_name)
            return name


def trace(
    forward_func: Callable[..., Any], args: Sequence[object], record_stack_traces: bool = False
) -> TracedGraph:
    """Trace ``forward_func(*args)``; non-tensor arguments are baked in as constants.

    ``record_stack_traces`` keeps each node's user source line for error messages; it costs
    about as much as the rest of the trace, so it is asked for only once an error occurred.
    """
    if not record_stack_traces and len(args) == 1 and isinstance(args[0], Tensor):
        chain = _sequential_chain(forward_func)
        if chain is not None:
            holder = nn.Module()
            holder.add_module("model", forward_func)  # a reference, as below: nothing copied
            return TracedGraph(chain, holder)
    names = [f"arg{i}" for i in range(len(args))]
    call = "self.model" if isinstance(forward_func, nn.Module) else "self.fn"
    # fx reads the placeholders off the code object of the class's `forward`, so it needs exactly
    # one named parameter per argument: generate it on a private class.
    source = f"def forward(self, {', '.join(names)}):\n    return {call}({', '.join(names)})\n"
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # noqa: S102 - fixed template, no user text
    root = type("TracedForward", (nn.Module,), {"forward": namespace["forward"]})()
    if isinstance(forward_func, nn.Module):
        root.add_module("model", forward_func)
    else:
        owner = getattr(forward_func, "__self__", None)
        if isinstance(owner, nn.Module):
            root.add_module("model", owner)  # so that its submodules have names
        object.__setattr__(root, "fn", forward_func)
    concrete = {n: a for n, a in zip(names, args, strict=True) if not isinstance(a, Tensor)}
    tracer = _Tracer(record_stack_traces)
    try:
        graph = tracer.trace(root, concrete_args=concrete or None)
    except Exception as error:  # fx raises several types; say what to do about all of them
        raise _registry.UnsupportedOperationError(
            f"hope_attr could not trace the model with torch.fx ({type(error).__name__}: {error}). "
            "The usual cause is Python control flow on tensor values (if/for on a tensor) in a "
            "forward: register a Taylor rule for the module that contains it with "
            "@hope_attr.register_rule(ThatModule), so it is treated as one step (see "
            "docs/adding_a_rule.md)."
        ) from error
    return TracedGraph(graph, tracer.root)


def sequential_chain(
    forward_func: object, inputs: Sequence[Tensor], extra: Sequence[object]
) -> TracedGraph | None:
    """The shortcut graph of a plain ``nn.Sequential`` of modules with rules called on one tensor,
    when no module hook (its own or a global one) needs the modules to be called; else ``None``."""
    if len(inputs) != 1 or extra or not isinstance(forward_func, nn.Sequential):
        return None
    from hope_attr.engine import dispatch as _eager

    if _eager.user_hooks_present() or any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in forward_func.modules()
    ):
        return None
    # The chain of a model is cached for as long as the model lives, and rebuilt when its module
    # tree or the rules change (building it is a tenth of a small MLP's expansion).
    signature = (_registry.generation(), *((id(m), type(m)) for m in forward_func.modules()))
    cached = _CHAINS.get(forward_func)
    if cached is not None and cached[0] == signature:
        chain = cached[1]
    else:
        chain = _sequential_chain(forward_func)
        _CHAINS[forward_func] = (signature, chain)  # the graph names modules: no reference
    if chain is None:
        return None
    holder = nn.Module()
    holder.add_module("model", forward_func)  # a reference: nothing copied
    return TracedGraph(chain, holder)


_CHAINS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, fx.Graph | None]] = (
    weakref.WeakKeyDictionary()
)


@contextlib.contextmanager
def observing(observe: Callable[[object], None] | None) -> Iterator[None]:
    """Show ``observe`` every tensor a torch function returns (in this thread, meanwhile)."""
    if observe is None:
        yield
        return

    class _Observe(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
            result = func(*args, **(kwargs or {}))
            observe(result)
            return result

    with _Observe():
        yield


def _sequential_chain(forward_func: object) -> fx.Graph | None:
    """The graph ``torch.fx`` would trace for a plain ``nn.Sequential`` of modules with rules
    (nested plain ``Sequential`` containers allowed), built directly; ``None`` for anything else.

    Tracing costs about a millisecond, which is a fifth of a whole expansion of a small MLP.
    """
    if not _is_plain_sequential(forward_func):
        return None
    graph = fx.Graph()
    value: fx.Node | None = graph.placeholder("arg0")

    def chain(container: nn.Sequential, prefix: str, value: fx.Node) -> fx.Node | None:
        # `_modules`, not `named_children()`: a module listed twice runs twice.
        for name, child in container._modules.items():
            path = f"{prefix}.{name}"
            if child is not None and _registry.module_rule(type(child)) is not None:
                value = graph.call_module(path, (value,))
            elif _is_plain_sequential(child):
                value = chain(child, path, value)
                if value is None:
                    return None
            else:
                return None
        return value

    value = chain(forward_func, "model", value)
    if value is None:
        return None
    graph.output(value)
    return graph


def _is_plain_sequential(module: object) -> bool:
    return (
        isinstance(module, nn.Sequential)
        and type(module).forward is nn.Sequential.forward
        and _registry.module_rule(type(module)) is None
    )


def check_eval_mode(graph_module: TracedGraph) -> None:
    for name, module in graph_module.named_modules():
        if module.training and isinstance(module, _TRAIN_DEPENDENT):
            raise _registry.TrainingModeError(
                f"{_display_name(name)} ({type(module).__name__}) is in training mode, where its "
                "output is random or depends on the batch. Call model.eval() before computing "
                "derivatives."
            )


def run(
    graph_module: TracedGraph,
    args: Sequence[object],
    observe: Callable[[object], None] | None = None,
) -> object:
    """Interpret the graph on ``args`` (some of which may be jets); return the output value.

    ``observe`` sees every intermediate value (used to size chunks from the primal pass).
    """
    graph = graph_module.graph
    last_use: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        for source in node.all_input_nodes:
            last_use[source] = node
    env: dict[fx.Node, object] = {}
    placeholders = iter(args)
    for node in graph.nodes:
        if node.op == "placeholder":
            env[node] = next(placeholders)
            continue
        if node.op == "output":
            return _load(node.args[0], env)
        if node.op == "get_attr":
            env[node] = _fetch_attr(graph_module, node.target)
        else:
            call_args = _load(node.args, env)
            call_kwargs = _load(node.kwargs, env)
            env[node] = _call(graph_module, node, call_args, call_kwargs)
        if observe is not None:
            observe(env[node])
        # Free what no later node needs: jets are (order x directions) times the activation.
        for source in node.all_input_nodes:
            if last_use.get(source) is node:
                env.pop(source, None)
    raise RuntimeError("graph has no output node")


def _call(graph_module: TracedGraph, node: fx.Node, args: tuple, kwargs: dict) -> object:
    if node.op == "call_module":
        module = graph_module.get_submodule(node.target)
        if not contains_jet(args, kwargs):
            return module(*args, **kwargs)
        rule = _registry.module_rule(type(module))
        if rule is None:  # only reachable for leaf modules added by hand
            raise _registry.unsupported("module", type(module), _where(node))
        return rule(module, *args, **kwargs)

    if node.op == "call_method":
        target = getattr(torch.Tensor, node.target, node.target)
        if not contains_jet(args, kwargs):
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        kind = "tensor method"
    else:
        target = node.target
        if not contains_jet(args, kwargs):
            return target(*args, **kwargs)
        if target is operator.getitem and not is_jet(args[0]):
            return args[0][args[1]]  # selecting a jet out of a tuple or list
        kind = "function"
    rule = _registry.function_rule(target)
    if rule is None:
        raise _registry.unsupported(kind, target, _where(node))
    return rule(*args, **kwargs)


def _load(value: object, env: dict[fx.Node, object]) -> Any:
    return _replace(value, lambda v: env[v] if isinstance(v, fx.Node) else v)


def _fetch_attr(graph_module: TracedGraph, target: str) -> object:
    value: object = graph_module.root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _display_name(qualified: str) -> str:
    for prefix in ("model.", "fn."):
        if qualified.startswith(prefix):
            return f"module '{qualified[len(prefix) :]}'"
    return "the model" if qualified in ("model", "fn", "") else f"module '{qualified}'"


def _where(node: fx.Node) -> str:
    if node.op == "call_module":
        place = _display_name(str(node.target))
    else:
        stack = node.meta.get("nn_module_stack") or {}
        place = "called in " + (_display_name(list(stack)[-1]) if stack else "the forward")
    source = f"; source: {_user_frame(node)}" if _user_frame(node) else ""
    return f"({place}, graph node '{node.name}'{source})"


__all__ = ["Jet", "TracedGraph", "check_eval_mode", "run", "trace"]


def _user_frame(node: fx.Node) -> str:
    """The innermost frame of the recorded stack that is the user's code, not torch's."""
    lines = (node.meta.get("stack_trace") or "").splitlines()
    frames = [
        (lines[i].strip(), lines[i + 1].strip() if i + 1 < len(lines) else "")
        for i, line in enumerate(lines)
        if line.strip().startswith("File ")
    ]
    # By the packages' own folders, not by name: a clone of this repository is itself a folder
    # named hope_attr (git's default), whose tests and examples are the user's code.
    for location, code in reversed(frames):
        path = location.split('"')[1] if location.count('"') >= 2 else location
        if not os.path.realpath(path).startswith(_SKIPPED_ROOTS):
            return f"{location}: {code}"
    return ""


_SKIPPED_ROOTS = tuple(
    os.path.dirname(os.path.realpath(module.__file__)) + os.sep
    for module in (torch, fx, __import__("hope_attr"))
)
