"""The README's extension example runs as written (in a fresh process, so its registrations stay there)."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _example(index: int = 0) -> str:
    text = README.read_text()
    section = text.split("## Add a gradient policy, a normalization or a dataset", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[index]


def test_readme_extension_example_runs() -> None:
    code = _example() + "\nprint('OK', model[1].weight.grad.abs().sum().item() > 0)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "OK True" in out.stdout


def test_readme_registered_names_reach_trial_config() -> None:
    code = _example() + (
        "\nfrom study.training.config import TrialConfig\n"
        "c = TrialConfig.parse({'weight_norm': 'tanh', 'weight_policy': 'half', 'signal_policy': 'half'})\n"
        "print('CFG', c.weight_norm, c.weight_policy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "CFG tanh half" in out.stdout


def test_readme_dataset_example_is_one_call_that_trains() -> None:
    code = _example(1) + (
        "\nfrom study.training.trial import run_trial\n"
        "rec = run_trial({'dataset': 'blobs', 'hidden': [8], 'epochs': 10, 'batch_size': 16, 'lr': 0.01,"
        " 'digital': True, 'diagnostics': False})\n"
        "print('DATA', rec['config']['dataset'], rec['test_acc'] > 50)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "DATA blobs True" in out.stdout


def test_the_example_user_module_is_the_readme_block() -> None:
    import re

    text = README.read_text()
    block = re.search(r"### Your own network.*?```python\n(.*?)```", text, re.S).group(1)
    module = (README.parent / "examples" / "my_module.py").read_text()
    assert module.endswith(block), "examples/my_module.py and the README's residual-network block differ"
