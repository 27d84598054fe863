"""Taylor rules, one registry entry per torch operation, grouped by family.

Importing this package registers every built-in rule, in one place:

* :mod:`~hope_attr.rules.arithmetic`: ``+ - * /``, ``pow``, ``matmul``, reductions by sums;
* :mod:`~hope_attr.rules.linear`: linear maps (``linear``, ``conv*``, ``embedding``...): each
  coefficient through the map, the bias on the primal only;
* :mod:`~hope_attr.rules.elementwise`: smooth functions through a table of derivatives or a
  series recurrence; piecewise-linear ones on the branch taken at the primal;
* :mod:`~hope_attr.rules.functions`: more elementwise functions (``tan``, ``asin``, ``log2``,
  ``atan2``, ``logsigmoid``, ``sinc``, ``prelu``...);
* :mod:`~hope_attr.rules.pooling`: average/max/adaptive pooling;
* :mod:`~hope_attr.rules.structure`: reshapes, indexing, concatenation, padding;
* :mod:`~hope_attr.rules.indexing`: writes (``x[i] = v``, ``index_put``, ``scatter``...);
* :mod:`~hope_attr.rules.recurrent`: ``LSTMCell``, ``GRUCell``, ``RNNCell`` by their gates;
* :mod:`~hope_attr.rules.sampling`: ``F.grid_sample``, 2-d and 3-d, in every mode and padding
  (interpolation weights, polynomials of the grid, times pixel values), ``F.affine_grid``;
* :mod:`~hope_attr.rules.attention`: fused attention kernels, through their composition;
* :mod:`~hope_attr.rules.compositions`: rules that only encode an identity over other rules
  (softmax, LayerNorm, GELU...);
* :mod:`~hope_attr.rules.distances`: ``linalg.norm``, ``cdist``, ``cosine_similarity``;
* :mod:`~hope_attr.rules.selections`: ``max``/``min`` over axes, ``topk``, ``sort``, ``median``:
  the entry chosen at the primal, with its series;
* :mod:`~hope_attr.rules.spectral`: ``torch.fft`` (linear: every coefficient transformed) and
  complex values (``view_as_complex``, ``.real``, ``abs``);
* :mod:`~hope_attr.rules.reductions`: ``sum``, ``prod``, ``cumprod``, ``logsumexp``, ``var``...

:mod:`~hope_attr.rules.checks` holds what the rules share: the wording of a refusal, and the
warning for an operation that mixes the examples of a batch.

``docs/adding_a_rule.md`` shows how a user adds one (``hope_attr.register_rule``).
"""

from hope_attr.rules import (  # noqa: F401  (each module registers its rules on import)
    arithmetic,
    attention,
    compositions,
    distances,
    elementwise,
    functions,
    indexing,
    linear,
    pooling,
    recurrent,
    reductions,
    sampling,
    selections,
    spectral,
    structure,
)
