"""The Captum front end: :class:`~hope_attr.HOPEAttribution` and what it builds on.

* :mod:`~hope_attr.attribution.hope`: ``HOPEAttribution`` (Captum's ``Attribution`` contract);
* :mod:`~hope_attr.attribution.arguments`: Captum's arguments (inputs, baselines, masks, targets),
  formatted with Captum's own helpers and checked with messages that say the fix;
* :mod:`~hope_attr.attribution.groups`: feature-mask groups, their directions and spreading;
* :mod:`~hope_attr.attribution.methods`: the table of methods (exact, diagonal, continuation);
* :mod:`~hope_attr.attribution.computation`: one attribution call from formatted arguments;
* :mod:`~hope_attr.attribution.result`: ``HOPEResult``, the typed result of
  ``attribute_with_details``;
* :mod:`~hope_attr.attribution.continuation`: ``method="continuation"``, the series where it
  converges and a forward pass elsewhere;
* :mod:`~hope_attr.attribution.convergence`: radius estimates, ``Diagnostics`` and the warnings;
* :mod:`~hope_attr.attribution.diagonal`: the HOPE paper's one-sweep rule
  (``method="diagonal"``), a named approximation.
"""
