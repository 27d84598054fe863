"""The engine: jets, the rule registry, and running a model's forward on jets.

Nothing here knows an operator's derivative: those are the rules (:mod:`hope_attr.rules`),
which register themselves in :mod:`hope_attr.engine.registry`. What lives here:

* :mod:`~hope_attr.engine.jet`: the :class:`Jet` data type (the jet convention is stated once,
  in its docstring); :mod:`~hope_attr.engine.series` and :mod:`~hope_attr.engine.arithmetic`:
  the series arithmetic the rules share; :mod:`~hope_attr.engine.taylor_tables`: derivative
  tables of elementwise functions;
* :mod:`~hope_attr.engine.registry`: the one rule registry (``register_rule``) and the errors;
* :mod:`~hope_attr.engine.dispatch`: runs the user's forward eagerly with jets for tensors and
  sends every torch call on a jet to its rule (or a decomposition, or a clear refusal);
  :mod:`~hope_attr.engine.modules`: how modules take part (eval check, users' module rules);
  :mod:`~hope_attr.engine.locate`: where in the user's code an error happened;
  :mod:`~hope_attr.engine.sequential`: the fast path for a plain ``nn.Sequential``;
* :mod:`~hope_attr.engine.expansion`: :class:`Expansion`, one model at one point: validation,
  the primal pass, chunks of directions, and the choice of reverse mode
  (:mod:`~hope_attr.engine.reverse`) where it is exact and cheaper;
  :mod:`~hope_attr.engine.batching`: extra arguments that follow their examples;
  :mod:`~hope_attr.engine.factorials`: from coefficients to derivatives, and the order limits;
* :mod:`~hope_attr.engine.kinks`: where piecewise-linear choices flip (for continuation);
* the one resource policy (:mod:`~hope_attr.engine.resources`), the per-call state
  (:mod:`~hope_attr.engine.scope`) and the speed paths it switches: the primal memo
  (:mod:`~hope_attr.engine.memo`), the workspace (:mod:`~hope_attr.engine.workspace`),
  receptive-field windows (:mod:`~hope_attr.engine.windows`) and the compiled series kernel
  (:mod:`~hope_attr.engine.native`); :mod:`~hope_attr.engine.configuration`: ``show_config``.

Internal: the public names are re-exported by :mod:`hope_attr`.
"""
