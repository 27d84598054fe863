"""Taylor polynomials of networks: the value type, its file format, formulas, bounds, discovery.

``hope_attr.polynomial`` is public: :class:`TaylorPolynomial` (``expand``'s result),
:class:`PolynomialModule` (``TaylorPolynomial.to_module()``), :class:`Discovery` and the
functions :func:`expand` and :func:`discover`, also exported as ``hope_attr.expand`` and
``hope_attr.discover``.
"""

from hope_attr.polynomial.taylor import (
    Discovery,
    PolynomialModule,
    TaylorPolynomial,
    discover,
    expand,
)

__all__ = ["Discovery", "PolynomialModule", "TaylorPolynomial", "discover", "expand"]
