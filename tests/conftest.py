"""Shared pytest options: heavy checks are opt-in with --runslow; --torch-free runs the tests that need no torch."""
from pathlib import Path

import pytest
from helpers.torch_free import MODULES, block

# The session fixtures below that are built with training / export (torch).
TORCH_FIXTURES = {"synthetic_data", "tiny_run", "model_dir"}


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")
    parser.addoption("--torch-free", action="store_true", default=False,
                     help="run only the modules listed in tests/helpers/torch_free.py with torch, training, export "
                          "and benchmarks unimportable; tests there that need torch skip")


def pytest_ignore_collect(collection_path: Path, config):
    if config.getoption("--torch-free") and collection_path.suffix == ".py" and collection_path.stem not in MODULES:
        return True
    return None


def pytest_collection_modifyitems(config, items):
    runslow, torch_free = config.getoption("--runslow"), config.getoption("--torch-free")
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords and not runslow:
            item.add_marker(skip)
        needs = sorted(TORCH_FIXTURES & set(item.fixturenames))
        if item.get_closest_marker("torch"):
            needs.append("marked torch")
        if torch_free and needs:
            item.add_marker(pytest.mark.skip(reason=f"--torch-free: needs torch ({', '.join(needs)})"))


def pytest_configure(config):
    config.addinivalue_line("markers", "torch: imports torch in the test; skipped by --torch-free")
    if config.getoption("--torch-free"):
        missing = [name for name in MODULES if not (Path(__file__).parent / f"{name}.py").is_file()]
        if missing:
            raise pytest.UsageError(f"tests/helpers/torch_free.py lists test modules that do not exist: {missing}")
        block()
    # Two cores shared with other processes: OpenMP spin-waiting across 2 threads can make CPU tests 20x slower.
    try:
        import torch
    except ImportError:  # the torch-free run, or the torch-free runtime's own test environment
        return
    torch.set_num_threads(1)


# ------------------------------------------------------------------ shared artefacts (built once per session)
@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """A small synthetic dataset: 4 classes x (2 train, 1 good + 1 per defect type test), 64 pixels."""
    from training.synthetic import generate

    return generate(tmp_path_factory.mktemp("data") / "synthetic", train=2, test_good=1, test_defect=1, size=64)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """An untrained `tiny` run folder (seeded weights; the zero-initialised convs made small and random, as
    training makes them, so the SG network reaches the UNet): enough for export, parity and runtime tests."""
    import torch

    from training.models.diad import build_model
    from training.models.presets import get_preset
    from training.run_folder import RunFolder

    config = get_preset("tiny")
    config.scorer.statistics = "none"  # 1 - cos: no fitted statistics needed (tests/test_normal_statistics.py)
    torch.manual_seed(0)
    run = RunFolder(tmp_path_factory.mktemp("run")).create()
    run.write_config({"model": config.to_dict()})
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    run.save_model(model)
    return run.root


@pytest.fixture(scope="session")
def model_dir(tiny_run, tmp_path_factory):
    """The FP32 model folder of ``tiny_run`` (written by `python -m export`)."""
    from export.__main__ import main

    out = tmp_path_factory.mktemp("models") / "tiny-fp32"
    assert main(["--run", str(tiny_run), "--out", str(out), "--max-batch", "4", "--no-verify"]) == 0
    return out
