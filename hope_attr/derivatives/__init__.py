"""Derivatives of a network at a point: every unmixed one (any input size) and every mixed
partial (low-dimensional inputs).

* :mod:`~hope_attr.derivatives.unmixed`: :func:`hope_attr.unmixed_derivatives`;
* :mod:`~hope_attr.derivatives.mixed`: :func:`hope_attr.mixed_derivatives`, from univariate jets
  along ``C(p+n-1, n)`` directions (:mod:`~hope_attr.derivatives.interpolation` recovers the
  mixed partials from them) or, for MLPs, multivariate polynomials
  (:mod:`~hope_attr.derivatives.mlp`);
* :mod:`~hope_attr.derivatives.monomials`: the order of multi-indices every result uses.
"""
