"""How modules take part in a run: the run's state, the eval-mode check, users' module rules.

Module rules are for users (``register_rule(MyModule)``); the built-in rules are all function
rules, reached by the torch calls of each module's own ``forward``. A user's module rule is
honoured through one pair of process-wide module hooks that exist only while some thread runs an
expansion, and act only in that thread: such a module runs its ``forward`` on copies of the
primals (so its Python, hooks and asserts still run) and its rule supplies the jet. A module that
carries its own forward pre-hooks, or runs while other global forward hooks exist, runs its
``forward`` on the jets instead, so that the hooks see them. Nothing is set on the user's
modules, and the hooks are gone when the last run ends, also after an error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence

from torch import nn
from torch.utils.hooks import RemovableHandle

from hope_attr.engine import registry as _registry
from hope_attr.engine import scope as _scope
from hope_attr.engine.arithmetic import _replace, contains_jet
from hope_attr.engine.jet import Jet

__all__ = ["Run", "check_eval_mode", "current_run", "running", "user_hooks_present"]

# Modules whose training-mode behaviour differs from eval: expanding them in training mode would
# differentiate a random mask or batch statistics.
_TRAIN_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


class Run:
    """What one thread's current expansion needs to know while the model runs."""

    def __init__(
        self,
        forward_func: object,
        observe: Callable[[object], None] | None,
        inputs: Sequence[object] = (),
    ) -> None:
        self.forward_func = forward_func
        self.observe = observe
        # The batch size of the jets the forward starts from (None: none, or sizes differ). A
        # reduction over an axis 0 of another size cannot mix examples (a stack of the model's
        # own branches, `torch.stack(logits).sum(0)`): rules.checks reads this.
        sizes = {x.primal.shape[0] for x in inputs if isinstance(x, Jet) and x.primal.dim() > 0}
        self.batch: int | None = sizes.pop() if len(sizes) == 1 else None
        # Modules whose forward runs on primals while their rule makes the jet: (module, jets).
        self.pending: list[tuple[nn.Module, tuple]] = []
        # Module calls made inside such a forward (they see no jets and must not be matched).
        self.nested = 0
        self._names: dict[int, str] | None = None

    def module_name(self, module: nn.Module) -> str | None:
        if self._names is None:
            roots = [self.forward_func, getattr(self.forward_func, "__self__", None)]
            self._names = {}
            for root in roots:
                if isinstance(root, nn.Module):
                    for name, sub in root.named_modules(remove_duplicate=False):
                        self._names.setdefault(id(sub), name)
        return self._names.get(id(module))


def current_run() -> Run | None:
    """The run in progress in this thread, if any."""
    return _scope.current().run


@contextlib.contextmanager
def running(
    forward_func: object,
    observe: Callable[[object], None] | None = None,
    inputs: Sequence[object] = (),
) -> Iterator[None]:
    """The engine's state for one run of ``forward_func`` on ``inputs`` in this thread: what
    :func:`dispatch` and the module hooks read. Restored on exit, also after an error or Ctrl-C."""
    _ModuleHooks.acquire()
    try:
        with _scope.active(run=Run(forward_func, observe, inputs)):
            yield
    finally:
        _ModuleHooks.release()


def check_eval_mode(forward_func: object) -> None:
    """Refuse Dropout/BatchNorm in training mode anywhere in a model we can see."""
    owner = forward_func if isinstance(forward_func, nn.Module) else None
    owner = owner or getattr(forward_func, "__self__", None)
    if not isinstance(owner, nn.Module):
        return  # other modules are checked when they are called (see _ModuleHooks)
    for name, module in owner.named_modules():
        _check_module_mode(module, name)


def _check_module_mode(module: nn.Module, name: str | None) -> None:
    if module.training and isinstance(module, _TRAIN_DEPENDENT):
        where = f"module '{name}'" if name else "the model"
        if name is None:
            where = f"a {type(module).__name__} module"
        raise _registry.TrainingModeError(
            f"{where} ({type(module).__name__}) is in training mode, where its output is "
            "random or depends on the batch. Call model.eval() before computing derivatives."
        )


class _ModuleHooks:
    """One global forward pre-hook and forward hook, present while any thread expands."""

    _lock = threading.Lock()
    _users = 0
    _handles: tuple[RemovableHandle, RemovableHandle] | None = None

    @classmethod
    def acquire(cls) -> None:
        with cls._lock:
            cls._users += 1
            if cls._handles is None:
                cls._handles = (
                    nn.modules.module.register_module_forward_pre_hook(_before_module),
                    nn.modules.module.register_module_forward_hook(_after_module),
                )

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users == 0 and cls._handles is not None:
                for handle in cls._handles:
                    handle.remove()
                cls._handles = None

    @classmethod
    def ours(cls) -> set[int]:
        handles = cls._handles
        return {h.id for h in handles} if handles is not None else set()


def _before_module(module: nn.Module, args: tuple) -> tuple | None:
    state = current_run()
    if state is None:
        return None
    if state.pending:
        state.nested += 1  # inside a forward that runs on primals
        return None
    _check_module_mode(module, state.module_name(module))
    rule = _registry.module_rule(type(module))  # only users register module rules
    # Hooks that must see what the module computes on jets: its own pre-hooks (they run after
    # this one) and other global forward hooks (registered before ours, they run before ours).
    # Then the forward runs on jets itself, through the function rules.
    foreign_hooks = len(nn.modules.module._global_forward_hooks) > 1
    if rule is None or module._forward_pre_hooks or foreign_hooks or not contains_jet(args):
        return None
    state.pending.append((module, args))
    # Copies: the forward may work in place (SiLU(inplace=True)) on what is the jet's primal.
    return _replace(args, lambda a: a.primal.clone() if isinstance(a, Jet) else a)


def _after_module(module: nn.Module, args: tuple, output: object) -> object:
    state = current_run()
    if state is None or not state.pending:
        return None
    if state.nested:
        state.nested -= 1
        return None
    pending, jets = state.pending.pop()
    assert pending is module, "module hooks out of step"
    result = _registry.module_rule(type(module))(module, *jets)
    if state.observe is not None:
        state.observe(result)
    return result


def user_hooks_present() -> bool:
    """Global module hooks other than ours (they must run, so no shortcut may skip modules)."""
    mod = nn.modules.module
    ours = _ModuleHooks.ours()
    tables = (
        mod._global_forward_pre_hooks,
        mod._global_forward_hooks,
        mod._global_backward_pre_hooks,
        mod._global_backward_hooks,
    )
    return any(key not in ours for table in tables for key in list(table))
