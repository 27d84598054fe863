"""Audit a whole data set: attribution maps written to disk, locally or on Ray, and SpRAy.

* :func:`attribute_dataset` runs any Captum attribution (``HOPEAttribution`` first) over a
  map-style data set, writes the maps in checksummed shards with a manifest, and resumes an
  interrupted run where it stopped; a store holds one (method, model, data set, settings) and one
  writer at a time;
* :class:`AttributionStore` reads such a folder, indexed by the examples' data set indices, and
  checks every shard it reads;
* :func:`spray` runs spectral relevance analysis (Lapuschkin et al. 2019) on stored maps to find
  groups of examples that the model decides on in the same way, e.g. a Clever-Hans strategy;
* :func:`to_virelay` exports a store and its SpRAy analyses as a ViRelAy project.

This module is imported on its own (``import hope_attr.audit``); ``engine="ray"`` needs the
``audit`` extra (``pip install 'hope_attr[audit]'``), :func:`spray` needs scikit-learn, and
:func:`to_virelay` h5py (``pip install 'hope_attr[virelay]'`` for the viewer too).
"""

from hope_attr.audit._lock import StoreLockedError
from hope_attr.audit._manifest import StoreError
from hope_attr.audit._run import attribute_dataset
from hope_attr.audit._spray import SprayResult, spray
from hope_attr.audit._store import AttributionStore, Example
from hope_attr.audit._virelay import to_virelay

__all__ = [
    "AttributionStore",
    "Example",
    "SprayResult",
    "StoreError",
    "StoreLockedError",
    "attribute_dataset",
    "spray",
    "to_virelay",
]
