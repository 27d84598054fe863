"""The engine: jets, the rule registry, and running a model's forward on jets.

Nothing here knows an operator's derivative: those are the rules (:mod:`hope_attr.rules`),
which register themselves in :mod:`hope_attr.engine.registry`. What lives here:

* :mod:`~hope_attr.engine.jet`: the :class:`Jet` data type and the series arithmetic the rules
  share (the jet convention is stated once, in its docstring);
* :mod:`~hope_attr.engine.registry`: the one rule registry (``register_rule``), the errors;
* :mod:`~hope_attr.engine.dispatch`: runs the user's forward eagerly with jets for tensors and
  sends every torch call on a jet to its rule (or a decomposition, or a clear refusal);
* :mod:`~hope_attr.engine.sequential`: the fast path for a plain ``nn.Sequential``;
* :mod:`~hope_attr.engine.expansion`: :class:`Expansion`, one model at one point: validation,
  the primal pass, chunks of directions, and the choice of reverse mode
  (:mod:`~hope_attr.engine.reverse`) where it is exact and cheaper;
* :mod:`~hope_attr.engine.kinks`: where piecewise-linear choices flip (for continuation);
* the per-call resources (budgets, primal memo, workspace, receptive-field windows, the compiled
  series kernel): :mod:`~hope_attr.engine.resources` and the modules it names.

Internal: the public names are re-exported by :mod:`hope_attr`.
"""
