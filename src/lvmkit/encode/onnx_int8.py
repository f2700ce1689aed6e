"""The onnx-int8 backend: the same model, exported to ONNX, int8-quantised, run by onnxruntime on the CPU.

What happens on the first load of a model (a few seconds for all-MiniLM-L6-v2), then never again:

1. the model's transformer (not its pooling) is exported with ``torch.onnx.export`` (TorchScript exporter,
   ``dynamo=False``), with dynamic batch and sequence axes; its output is the token embeddings;
2. the weights of every MatMul are quantised to int8, one scale per output channel
   (``onnxruntime.quantization.quantize_dynamic(per_channel=True, weight_type=QInt8)``); activations are
   quantised on the fly at run time ("dynamic" quantisation: no calibration data needed);
3. the quantised model, the model's own tokenizer and ``encoder.json`` (EncoderInfo, max sequence length,
   pooling) are written to a temporary directory that is renamed into the cache in one step:
   ``$LVMKIT_CACHE/onnx/<model>-<hash>/`` (``$LVMKIT_CACHE`` defaults to ``~/.cache/lvmkit``). The hash
   covers the model name, its revision and the export recipe, so a changed model gets a new entry.

Encoding tokenises with that tokenizer (same truncation as sentence-transformers), runs the int8 model
with onnxruntime's CPUExecutionProvider (one batch per thread, as many threads as physical cores this
process may use), and
pools (mean over the attention mask, or the model's own pooling) and L2-normalises in numpy. Batches are
cut from length-sorted texts as in the fp32 backend.

The vectors approximate the fp32 ones (cosine ~0.99 on Wikipedia sentences for all-MiniLM-L6-v2; see
benchmarks/bench_encode.py) in the same space: ``EncoderInfo`` has the same name, dim, pooling and
normalisation as the fp32 backend's (backend "onnx-int8", dtype "int8"), so banks from either backend mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lvmkit.artifacts import read_json, write_json
from lvmkit.bank.manifest import EncoderInfo
from lvmkit.encode.base import ProgressFn, encode_in_batches, l2_normalize
from lvmkit.encode.st import (
    ModelSource,
    load_sentence_transformer,
    model_dim,
    model_pooling,
    resolve_model,
)
from lvmkit.errors import ArtifactError, ConfigError, LvmkitError

RECIPE = 1  # bump when the export or quantisation recipe changes: old cache entries are then ignored
MODEL_FILE = "model.int8.onnx"
META_FILE = "encoder.json"
TOKENIZER_DIR = "tokenizer"
POOLINGS = ("mean", "cls", "max")  # poolings done here in numpy
_MODULES = ("Transformer", "Pooling", "Normalize")  # the sentence-transformers modules this backend rebuilds


def cache_root() -> Path:
    """``$LVMKIT_CACHE`` if set, else ``$XDG_CACHE_HOME/lvmkit`` (default ``~/.cache/lvmkit``)."""
    if os.environ.get("LVMKIT_CACHE"):
        return Path(os.environ["LVMKIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "lvmkit"


def cache_dir(source: ModelSource) -> Path:
    """The cache entry of one model: readable prefix + hash of (name, revision, recipe)."""
    key = json.dumps({"name": source.name, "revision": source.revision, "recipe": RECIPE}, sort_keys=True)
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in source.name.strip("/"))[-48:]
    return cache_root() / "onnx" / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def default_threads() -> int:
    """Physical cores this process may run on (hyper-threads slow onnxruntime's matmuls down)."""
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or usable
    return max(1, min(usable, physical))


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise LvmkitError("backend 'onnx-int8' needs onnxruntime and onnx: pip install 'lvmkit[onnx]'") from e
    return onnxruntime


class OnnxInt8Encoder:
    """An int8 ONNX model from the cache behind the ``Encoder`` contract. Build it with ``load``.

    ``threads`` CPU threads each run whole batches through one single-threaded onnxruntime session
    (``session.run`` is thread-safe and releases the GIL). For a model this small that beats one session
    splitting every op across the threads (measured on 2 cores: ~1.35x), because no op waits for the
    others. Small length-sorted batches keep the activations in cache (batch 8 beat 16, 32 and 64).
    """

    default_batch_size = 8

    def __init__(self, model_dir: str | Path, threads: int | None = None, sort_by_length: bool = True):
        ort = _onnxruntime()
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        try:
            meta = read_json(self.model_dir / META_FILE)
            self.info = EncoderInfo(**meta["info"])
            self.max_seq_length = int(meta["max_seq_length"])
            self.do_lower_case = bool(meta["do_lower_case"])
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir / TOKENIZER_DIR))
        except Exception as e:
            raise ArtifactError(
                f"the onnx-int8 cache entry {self.model_dir} is damaged ({type(e).__name__}: {e}); "
                "delete that directory and load again to rebuild it"
            ) from e
        self.sort_by_length = sort_by_length
        self.threads = threads or default_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # parallel over batches instead, see the class docstring
        options.inter_op_num_threads = 1
        # no busy-waiting between ops: on a shared or oversubscribed CPU, spinning threads burn the
        # cores other processes need (measured: ~17 chunks/s at load 9 with spinning on)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(self.model_dir / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    @classmethod
    def load(
        cls, name: str | None = None, threads: int | None = None, sort_by_length: bool = True
    ) -> OnnxInt8Encoder:
        """Load ``name`` (None = the offline default model) from the cache, exporting it first if needed."""
        _onnxruntime()
        source, model = resolve_model(name), None
        if source.path is None:  # a hub id not in the local hub cache: download it to learn its revision
            model, source = load_sentence_transformer(source, "cpu")
        entry = cache_dir(source)
        if not (entry / META_FILE).exists():
            build_cache_entry(source, entry, model)
        return cls(entry, threads=threads, sort_by_length=sort_by_length)

    def encode(
        self, texts: Sequence[str], batch_size: int | None = None, progress: ProgressFn | None = None
    ) -> np.ndarray:
        """float32 [n, dim], unit rows, row i = texts[i]; ``progress(k)`` after each batch of k texts."""
        size = self.default_batch_size if batch_size is None else batch_size
        return encode_in_batches(
            texts, self._encode_batch, self.info.dim, size, progress, self.sort_by_length, self.threads
        )

    def _encode_batch(self, batch: list[str]) -> np.ndarray:
        if self.do_lower_case:
            batch = [t.lower() for t in batch]
        tokens = self.tokenizer(
            batch, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="np"
        )
        feeds = {name: tokens[name].astype(np.int64) for name in self.input_names}
        hidden = self.session.run(None, feeds)[0]  # [B, T, hidden] token embeddings
        return l2_normalize(pool(hidden, tokens["attention_mask"], self.info.pooling))


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Sentence vectors from token embeddings [B, T, H] and the attention mask [B, T] (1 = real token)."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask[..., None].astype(np.float32)
    if mode == "max":
        return np.where(m > 0, hidden, -np.inf).max(axis=1)
    if mode == "mean":
        return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    raise ConfigError(f"pooling {mode!r} is not supported by onnx-int8; supported: {', '.join(POOLINGS)}")


# ------------------------------------------------------------------------------------------------ export
def build_cache_entry(source: ModelSource, entry: Path, model: Any | None = None) -> None:
    """Export + quantise ``source`` into ``entry``, atomically: built in a temporary sibling directory and
    renamed into place, so a killed export never leaves a half-written entry. If another process finished
    the same entry first, its copy is kept."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        if model is None:
            model, source = load_sentence_transformer(source, "cpu")
        export_int8(model, source, tmp)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / META_FILE).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent export won the race
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_int8(model: Any, source: ModelSource, out: Path) -> None:
    """Write MODEL_FILE, TOKENIZER_DIR and META_FILE for a loaded SentenceTransformer into ``out``."""
    kinds = [type(m).__name__ for m in model]
    if kinds[:1] != ["Transformer"] or any(k not in _MODULES for k in kinds):
        raise ConfigError(
            f"backend 'onnx-int8' rebuilds models made of {' + '.join(_MODULES)}; {source.name} has "
            f"{' + '.join(kinds)}. Use backend 'st' for it."
        )
    pooling = model_pooling(model)
    if pooling not in POOLINGS:
        raise ConfigError(
            f"{source.name} uses {pooling!r} pooling; onnx-int8 supports {', '.join(POOLINGS)}. "
            "Use backend 'st' for it."
        )
    tokenizer = model.tokenizer
    max_len = model.max_seq_length or tokenizer.model_max_length
    fp32 = out / "model.fp32.onnx"
    input_names = export_transformer(model[0].auto_model, tokenizer, fp32)
    quantize_int8(fp32, out / MODEL_FILE)
    fp32.unlink()
    tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    info = EncoderInfo(
        name=source.name,
        revision=source.revision,
        dim=model_dim(model),
        pooling=pooling,
        normalized=True,
        backend="onnx-int8",
        dtype="int8",
    )
    write_json(
        out / META_FILE,
        {
            "recipe": RECIPE,
            "info": info.model_dump(mode="json"),
            "max_seq_length": int(max_len),
            "do_lower_case": bool(getattr(model[0], "do_lower_case", False)),
            "inputs": input_names,
            "source_path": str(source.path),
        },
    )


def export_transformer(hf_model: Any, tokenizer: Any, path: Path) -> list[str]:
    """Export a Hugging Face encoder as ONNX: token ids (+ mask, + type ids) -> last_hidden_state.
    Returns the input names, which are the tokenizer outputs the model's forward accepts."""
    import torch

    accepted = inspect.signature(hf_model.forward).parameters
    # two texts of different lengths, so the traced graph takes the padded (general) attention-mask path
    dummy = tokenizer(["lvmkit", "an export example with some padding"], padding=True, return_tensors="pt")
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in dummy and k in accepted]
    if "attention_mask" not in names:
        raise ConfigError("onnx-int8 needs a tokenizer that returns an attention_mask")
    if hasattr(hf_model, "set_attn_implementation"):
        # plain attention traces into a simpler graph than the fused SDPA kernels (older models lack it)
        with contextlib.suppress(Exception):
            hf_model.set_attn_implementation("eager")

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = hf_model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    dynamic = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        torch.onnx.export(
            LastHiddenState().eval(),
            tuple(dummy[n] for n in names),
            str(path),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )
    return names


def quantize_int8(src: Path, dst: Path) -> None:
    """Per-channel dynamic int8 quantisation of the MatMul weights (signed int8 weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger()  # quantize_dynamic logs a root-level hint about pre-processing
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)
    finally:
        quiet.setLevel(level)
