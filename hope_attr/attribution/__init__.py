"""The Captum front end: :class:`~hope_attr.HOPEAttribution` and what it builds on.

* :mod:`~hope_attr.attribution.hope`: ``HOPEAttribution`` (Captum's ``Attribution`` contract);
* :mod:`~hope_attr.attribution.continuation`: ``method="continuation"``, the series where it
  converges and a forward pass elsewhere;
* :mod:`~hope_attr.attribution.convergence`: radius estimates, ``Diagnostics`` and the warnings;
* :mod:`~hope_attr.attribution.diagonal`: the HOPE paper's one-sweep rule
  (``method="diagonal"``), a named approximation.
"""
