"""The Captum front end: Captum's three families of attribution, and what they build on.

The families (``docs/layer_neuron.md``), each a Captum ``Attribution`` subclass:

* :mod:`~hope_attr.attribution.hope`: ``HOPEAttribution``, the primary family: a model output
  as a function of the model's inputs, predicting ``FeatureAblation``;
* :mod:`~hope_attr.attribution.layer`: ``LayerHOPEAttribution``, the layer family: a model
  output as a function of one layer's neurons, predicting ``LayerFeatureAblation``;
* :mod:`~hope_attr.attribution.neuron`: ``NeuronHOPEAttribution``, the neuron family: one
  neuron of a layer as a function of the model's inputs, predicting ``NeuronFeatureAblation``;
* :mod:`~hope_attr.attribution.layer_hooks`: a layer's activation read or replaced for one
  forward pass (the hooks the layer and neuron families see the model through).

What ``HOPEAttribution`` builds on (the layer and neuron families call it):

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
