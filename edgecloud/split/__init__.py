"""Split inference for tensor models: partition ONNX graphs between device and cloud.

* :class:`Partitioner` cuts a graph into a device head and a cloud tail
  (``onnx.utils.Extractor`` underneath) at any set of tensors that separates
  inputs from outputs; :class:`Dag` is its node graph, whose s-t minimum cut
  under :class:`GraphCosts` (per-node times, per-tensor bytes) is the best
  partition, multi-tensor cuts included.
* :class:`SplitModel` profiles every cut, keeps a moving estimate of the link,
  and runs each call at the cut with the lowest predicted latency (or device
  energy), falling back to all-local when the cloud is gone;
  :meth:`SplitModel.stream` pipelines frames.
* :class:`SplitServer` is the cloud side: warm tail sessions over gRPC
  (``edgecloud.v1.SplitService``) and the KServe v2 ``GRPCInferenceService``
  that Triton clients speak.
* :class:`Cascade` runs a small classifier here and escalates low-margin inputs.

Importing this package is light: onnx, numpy and grpc load on first use of a name.

Examples:
    >>> from edgecloud.split import SplitModel                          # doctest: +SKIP
    >>> model = SplitModel("digits_cnn.onnx", cloud="127.0.0.1:50061")
    >>> outputs = model.run({"input": frame})
    >>> model.last.cut.name
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecloud.common.lazy import lazy_attributes

if TYPE_CHECKING:
    from edgecloud.split._cascade import Cascade, margins
    from edgecloud.split._client import EmulatedLink, SplitClient, TailResult
    from edgecloud.split._codec import EncodedTensor, decode, encode
    from edgecloud.split._cost import (
        CutCost,
        CutProfile,
        LinkEstimate,
        LinkEstimator,
        PowerModel,
        choose_cut,
        predict,
    )
    from edgecloud.split._graph import Dag, GraphCosts
    from edgecloud.split._model import RunInfo, SplitModel
    from edgecloud.split._partition import Cut, Partitioner, TensorInfo
    from edgecloud.split._server import BackgroundServer, SplitServer

__all__ = [
    "BackgroundServer",
    "Cascade",
    "Cut",
    "CutCost",
    "CutProfile",
    "Dag",
    "EmulatedLink",
    "EncodedTensor",
    "GraphCosts",
    "LinkEstimate",
    "LinkEstimator",
    "Partitioner",
    "PowerModel",
    "RunInfo",
    "SplitClient",
    "SplitModel",
    "SplitServer",
    "TailResult",
    "TensorInfo",
    "choose_cut",
    "decode",
    "encode",
    "margins",
    "predict",
]

_WHERE = {
    "BackgroundServer": "edgecloud.split._server",
    "Cascade": "edgecloud.split._cascade",
    "Cut": "edgecloud.split._partition",
    "CutCost": "edgecloud.split._cost",
    "CutProfile": "edgecloud.split._cost",
    "Dag": "edgecloud.split._graph",
    "EmulatedLink": "edgecloud.split._client",
    "EncodedTensor": "edgecloud.split._codec",
    "GraphCosts": "edgecloud.split._graph",
    "LinkEstimate": "edgecloud.split._cost",
    "LinkEstimator": "edgecloud.split._cost",
    "Partitioner": "edgecloud.split._partition",
    "PowerModel": "edgecloud.split._cost",
    "RunInfo": "edgecloud.split._model",
    "SplitClient": "edgecloud.split._client",
    "SplitModel": "edgecloud.split._model",
    "SplitServer": "edgecloud.split._server",
    "TailResult": "edgecloud.split._client",
    "TensorInfo": "edgecloud.split._partition",
    "choose_cut": "edgecloud.split._cost",
    "decode": "edgecloud.split._codec",
    "encode": "edgecloud.split._codec",
    "margins": "edgecloud.split._cascade",
    "predict": "edgecloud.split._cost",
}


__getattr__ = lazy_attributes(__name__, _WHERE)
