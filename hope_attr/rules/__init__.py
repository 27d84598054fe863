"""Taylor rules, one registry entry per torch operation, grouped by family.

Importing this package registers every built-in rule, in one place:

* :mod:`~hope_attr.rules.arithmetic`: ``+ - * /``, ``pow``, ``matmul``, reductions by sums;
* :mod:`~hope_attr.rules.linear`: linear maps (``linear``, ``conv*``, ``embedding``...): each
  coefficient through the map, the bias on the primal only;
* :mod:`~hope_attr.rules.elementwise`: smooth functions through a table of derivatives or a
  series recurrence; piecewise-linear ones on the branch taken at the primal;
* :mod:`~hope_attr.rules.pooling`: average/max/adaptive pooling;
* :mod:`~hope_attr.rules.structure`: reshapes, indexing, concatenation, padding;
* :mod:`~hope_attr.rules.attention`: fused attention kernels, through their composition;
* :mod:`~hope_attr.rules.compositions`: rules that only encode an identity over other rules
  (softmax, LayerNorm, GELU...).

``docs/adding_a_rule.md`` shows how a user adds one (``hope_attr.register_rule``).
"""

from hope_attr.rules import (  # noqa: F401  (each module registers its rules on import)
    arithmetic,
    attention,
    compositions,
    elementwise,
    linear,
    pooling,
    structure,
)
