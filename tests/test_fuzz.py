"""Fuzzing in the suite (a fixed, derandomized number of inputs; ``python -m benchmarks.fuzz`` runs for longer):
random bytes and mutated valid files through the image decoder + pre-processing and through the manifest loader
give a project error or a valid result, never another exception, in bounded memory."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from benchmarks import fuzz
from benchmarks.memory import reset_peak, status_mib

EXAMPLES = 1000
MEMORY_MIB = 300  # the fuzz limits allow 1 MP frames (3 MB); decoders' own buffers stay far below this
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture
def peak_growth():
    """The growth of the process's peak RSS over the test, in MiB (against the peak before, where the kernel
    cannot reset it)."""
    reset_peak()
    before = status_mib("VmHWM")
    return lambda: status_mib("VmHWM") - before


def test_image_decoder_and_preprocessing(peak_growth):
    outcomes = []

    @FUZZ
    @given(fuzz.image_inputs())
    def decode(data: bytes) -> None:
        outcomes.append(fuzz.decode_once(data))

    decode()
    assert len(outcomes) >= EXAMPLES // 2 and {"image", "refused"} <= set(outcomes)  # both paths exercised
    assert peak_growth() < MEMORY_MIB


def test_manifest_loader(tmp_path, peak_growth):
    folder = tmp_path / "model"
    seed = fuzz.write_seed_folder(folder)
    outcomes = []

    @FUZZ
    @given(fuzz.manifest_inputs(seed))
    def load(text: bytes) -> None:
        outcomes.append(fuzz.load_once(folder, text))

    load()
    assert len(outcomes) >= EXAMPLES // 2 and {"loaded", "refused"} <= set(outcomes)
    assert peak_growth() < MEMORY_MIB
