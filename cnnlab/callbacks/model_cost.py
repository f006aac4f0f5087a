"""The model's cost in metrics.json: MACs for one image (parameters are already there), for the sweep table."""

from __future__ import annotations

import logging

from cnnlab.callbacks.base import Callback

log = logging.getLogger("cnnlab")


class ModelCost(Callback):
    def on_fit_end(self, trainer, model, data, metrics: dict) -> None:
        from cnnlab.analysis.summary import summarize

        spec = data.spec
        was_training = model.training
        try:
            network = getattr(model, "full", model)  # feature_extract trains on features: the cost is the network's
            metrics["macs"] = summarize(network, (spec.channels, spec.image_size, spec.image_size))["macs"]
        except (RuntimeError, NotImplementedError) as ex:  # a model the tracer cannot follow: keep the metrics
            log.warning("MACs not counted (%s: %s)", type(ex).__name__, ex)
        finally:
            model.train(was_training)
