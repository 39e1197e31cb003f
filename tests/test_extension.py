"""Extension by registration, end to end: a policy and a dataset defined in the user's own module, named by
a spec's `plugins:`, run in pool and Dask workers; the dataset registry; the spec key's bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, write_spec

import study.sweep.runner as R
from study.sweep.spec import expand, load_spec, parse_spec, stored_spec_hash
from study.training import data as D
from study.training.config import ConfigError, TrialConfig

PLUGIN = '''
import numpy as np
import analog
from study.training.data import register_dataset


@analog.register_policy("half_ste")
def half_ste(forward_fn, x):
    """Forward unchanged; backward half of the straight-through gradient."""
    y = forward_fn(x)
    return y.detach() + 0.5 * (x - x.detach())


def two_blobs(split_seed):
    """200 points of two Gaussian blobs in 8 features, scaled into [0, 1] (independent of split_seed)."""
    rng = np.random.default_rng(7)
    y = np.repeat([0, 1], 100)
    x = rng.normal(size=(200, 8)) + 2.0 * y[:, None]
    return (x - x.min()) / (x.max() - x.min()), y


register_dataset("blobs", two_blobs)
'''


def _plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> str:
    """Write the plugin module as `name` in tmp_path, importable here (sys.path) and by Dask's worker
    processes (PYTHONPATH); pool workers are spawned with this process's sys.path."""
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return name


def _spec(name: str, module: str) -> dict:
    return {
        "name": name,
        "plugins": [module],
        "base": {**TINY, "dataset": "blobs", "hidden": [8]},
        "factors": {"weight_policy": ["ste", "half_ste"]},
        "seeds": 2,
        "hypotheses": {"comparisons": [{"site": "weight", "a": "ste", "b": "half_ste"}]},
    }


def _records(sdir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (sdir / "trials").glob("*/record.json")}


def _check_run(out: Path, name: str, spec) -> None:
    recs = _records(out / name)
    assert set(recs) == {t.run_id for t in expand(spec)}
    assert {r["config"]["weight_policy"] for r in recs.values()} == {"ste", "half_ste"}
    assert all(r["config"]["dataset"] == "blobs" for r in recs.values())
    assert all(np.isfinite(r["test_acc"]) for r in recs.values())


@pytest.mark.slow
def test_user_policy_and_dataset_run_in_two_pool_workers(tmp_path, monkeypatch):
    module = _plugin(tmp_path, monkeypatch, "ng_plugin_pool")
    spec = load_spec(write_spec(tmp_path / "p.yaml", _spec("plugged", module)))
    counts = R.run_study(spec, out=tmp_path / "out", workers=2, bundle=1, quiet=True)
    assert counts == {"done": 4, "failed": 0, "todo": 0}
    _check_run(tmp_path / "out", "plugged", spec)
    assert "plugins:\n- ng_plugin_pool" in (tmp_path / "out" / "plugged" / "spec.yaml").read_text()


@pytest.mark.slow
def test_user_policy_and_dataset_run_in_dask_workers(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    module = _plugin(tmp_path, monkeypatch, "ng_plugin_dask")
    spec = load_spec(write_spec(tmp_path / "d.yaml", _spec("plugdask", module)))
    counts = R.run_study(spec, out=tmp_path / "out", workers=2, executor="dask", bundle=1, quiet=True)
    assert counts == {"done": 4, "failed": 0, "todo": 0}
    _check_run(tmp_path / "out", "plugdask", spec)


def test_a_worker_imports_the_plugins_before_building_a_trial(tmp_path, monkeypatch):
    """`execute_unit` (what each pool or Dask worker runs) imports the plugins it is given."""
    module = _plugin(tmp_path, monkeypatch, "ng_plugin_unit")
    spec = parse_spec(_spec("unit", module))
    sys.modules.pop(module)  # as in a fresh worker process
    sdir = R.prepare(spec, tmp_path / "out")
    (unit,) = R.make_units(spec, expand(spec)[:1], 1)
    events = R.execute_unit(str(sdir), unit, False, 1, (module,))
    assert [e["status"] for e in events] == ["done"] and module in sys.modules


def test_plugins_absent_leave_the_spec_hash_and_stored_yaml_unchanged(tmp_path, monkeypatch):
    base = {"name": "h", "base": TINY, "factors": {"seed": [0]} and {"weight_policy": ["ste", "exact"]}}
    plain = parse_spec(base)
    assert "plugins" not in plain.dump() and "plugins" not in R.spec_to_yaml(plain)
    assert stored_spec_hash(base) == plain.hash() == parse_spec({**base, "plugins": []}).hash()
    module = _plugin(tmp_path, monkeypatch, "ng_plugin_hash")
    assert parse_spec({**base, "plugins": [module]}).hash() != plain.hash()


@pytest.mark.parametrize(
    ("plugins", "message"),
    [
        (["no_such_module_xyz"], "plugins: cannot import 'no_such_module_xyz' (ModuleNotFoundError"),
        (["bad name"], "module names (dotted Python identifiers) expected"),
        (["os", "os"], "listed twice: ['os']"),
        ("os", "plugins"),
        ([3], "plugins"),
    ],
)
def test_bad_plugins_are_spec_errors_naming_the_field(plugins, message):
    with pytest.raises(ConfigError) as err:
        parse_spec({"name": "bad", "base": TINY, "plugins": plugins})
    assert message in str(err.value)


def test_a_plugin_that_raises_is_named(tmp_path, monkeypatch):
    (tmp_path / "ng_plugin_broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"cannot import 'ng_plugin_broken' \(RuntimeError: boom\)"):
        parse_spec({"name": "bad", "base": TINY, "plugins": ["ng_plugin_broken"]})


# --- the dataset registry ------------------------------------------------------------------------------


@pytest.fixture
def registry_snapshot():
    """Restore the dataset registry after a test that registers its own datasets."""
    saved = dict(D._DATASETS)
    yield
    D._DATASETS.clear()
    D._DATASETS.update(saved)
    D._load_cached.cache_clear()


def test_register_dataset_is_one_call_and_reaches_trial_config(registry_snapshot):
    rng = np.random.default_rng(0)
    x, y = rng.random((100, 5)), np.repeat(np.arange(4), 25)
    D.register_dataset("four", lambda split_seed: (x, y))
    assert D.available_datasets()[-1] == "four"
    assert TrialConfig.parse({"dataset": "four"}).dataset == "four"
    split = D.load_split("four", 3)
    assert (split.n_classes, split.n_features) == (D.N_CLASSES, 5)  # every dataset has a 10-way output
    assert len(split.train_y) + len(split.val_y) + len(split.test_y) == 100
    assert (len(split.val_y), len(split.test_y)) == (10, 20)  # the 70/10/20 split of the built-ins
    again = D.load_split("four", 4)
    assert not np.array_equal(split.test_y.numpy(), again.test_y.numpy()) or not np.array_equal(
        split.train_x.numpy(), again.train_x.numpy()
    )


def test_a_loader_gets_only_the_options_it_declares(registry_snapshot, tmp_path):
    seen = {}

    def loader(split_seed, data_dir):
        seen.update(split_seed=split_seed, data_dir=data_dir)
        return np.eye(10).repeat(10, axis=0), np.repeat(np.arange(10), 10)

    D.register_dataset("eye", loader)
    D.load_split("eye", 1, data_dir=str(tmp_path), n_samples=500)
    assert seen == {"split_seed": 1, "data_dir": str(tmp_path.resolve())}


def test_bad_datasets_are_refused_naming_what_is_wrong(registry_snapshot):
    with pytest.raises(ValueError, match="dataset name must be a non-empty string"):
        D.register_dataset("", lambda split_seed: None)
    with pytest.raises(TypeError, match="loader must be callable"):
        D.register_dataset("x", 3)
    with pytest.raises(TypeError, match="must take a `split_seed` argument"):
        D.register_dataset("x", lambda: None)
    D.register_dataset("weird", lambda split_seed: "not data")
    with pytest.raises(TypeError, match="loader must return a SplitData or \\(x, y\\); got str"):
        D.load_split("weird")
    with pytest.raises(ConfigError, match="unknown dataset 'nope'; allowed: mnist5k, digits"):
        TrialConfig.parse({"dataset": "nope"})
