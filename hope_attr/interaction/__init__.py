"""Feature interactions from one Taylor expansion: :func:`hope_attr.interactions`.

* :mod:`~hope_attr.interaction.indices`: the public function (Shapley/Banzhaf/Moebius indices
  of groups, shapiq's ``InteractionValues``);
* :mod:`~hope_attr.interaction.game`: the game itself, its values on batches of coalitions and
  its Taylor series along the coalitions' moves;
* :mod:`~hope_attr.interaction.moebius`: the Moebius transform of a polynomial game and the
  maps from it to each index;
* :mod:`~hope_attr.interaction.residual_shapley`: Shapley values of what the truncation leaves
  out, by permutation sampling around it.

(The folder is ``interaction``, not ``interactions``: ``hope_attr.interactions`` is the function.)
"""
