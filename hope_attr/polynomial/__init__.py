"""Taylor polynomials of networks: the value type, its file format, formulas, bounds, discovery.

``hope_attr.polynomial`` is public: :class:`TaylorPolynomial` (``expand``'s result),
:class:`PolynomialModule` (``TaylorPolynomial.to_module()``), :class:`Discovery` and the
functions :func:`expand` and :func:`discover`, also exported as ``hope_attr.expand`` and
``hope_attr.discover``.

One idea per module, imported in this order (no module imports a later one):

* ``recentering``: exact re-centering (binomial shifts, one variable at a time);
* ``validation``: checks of tensors, points, names, orders and sizes, with the limits;
* ``module``: evaluation (the table of monomials) and :class:`PolynomialModule`;
* ``symbolic``: terms as text, ``sympy`` expressions, LaTeX (``sympy`` imported when asked);
* ``serialization``: the JSON file format and the validation of untrusted files;
* ``bounds``: the paper's remainder bounds and convergence ratios;
* ``taylor``: :class:`TaylorPolynomial`, whose methods call the modules above;
* ``expanding``: :func:`expand`; ``discovery``: :class:`Discovery` and :func:`discover`.
"""

from hope_attr.polynomial.discovery import Discovery, discover
from hope_attr.polynomial.expanding import expand
from hope_attr.polynomial.module import PolynomialModule
from hope_attr.polynomial.taylor import TaylorPolynomial

__all__ = ["Discovery", "PolynomialModule", "TaylorPolynomial", "discover", "expand"]
