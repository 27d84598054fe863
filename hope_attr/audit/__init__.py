"""Audit a whole data set: attribution maps written to disk, locally or on Ray, and SpRAy.

* :func:`attribute_dataset` runs any Captum attribution (``HOPEAttribution`` first) over a
  map-style data set, writes the maps in shards with a manifest, and resumes an interrupted run
  where it stopped;
* :class:`AttributionStore` reads such a folder, indexed by the examples' data set indices;
* :func:`spray` runs spectral relevance analysis (Lapuschkin et al. 2019) on stored maps to find
  groups of examples that the model decides on in the same way, e.g. a Clever-Hans strategy.

This module is imported on its own (``import hope_attr.audit``); ``engine="ray"`` needs the
``audit`` extra (``pip install 'hope_attr[audit]'``), and :func:`spray` needs scikit-learn.
"""

from hope_attr.audit._run import attribute_dataset
from hope_attr.audit._spray import SprayResult, spray
from hope_attr.audit._store import AttributionStore, Example

__all__ = ["AttributionStore", "Example", "SprayResult", "attribute_dataset", "spray"]
