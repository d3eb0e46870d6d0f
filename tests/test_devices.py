"""The device vocabulary every command shares (runtime.devices): cpu, cuda, cuda:N; ONNX Runtime's provider apart."""
import pytest

from benchmarks import soak
from runtime import calibrate, stream
from runtime.detector import make_backend
from runtime.devices import cuda_ordinal, onnxruntime_provider, parse_device
from runtime.errors import BackendError


def test_devices_are_spelled_as_pytorch_spells_them():
    assert parse_device("cpu") == ("cpu", 0)
    assert parse_device("cuda") == ("cuda", 0) and parse_device("cuda:3") == ("cuda", 3)
    assert cuda_ordinal("cuda") == 0 and cuda_ordinal("cuda:1") == 1
    for bad in ("gpu", "cuda:", "cuda:x", "cpu:0", "tensorrt", "tensorrt:0", ""):
        with pytest.raises(BackendError, match=f"device {bad!r}: expected cpu, cuda or cuda:N"):
            parse_device(bad)
    with pytest.raises(BackendError, match=r"device '1': expected cpu, cuda or cuda:N \(cuda:1 for CUDA device 1\)"):
        cuda_ordinal("1")
    with pytest.raises(BackendError, match="TensorRT runs on a CUDA device"):
        cuda_ordinal("cpu")


def test_onnxruntime_provider_defaults_to_the_device_and_must_fit_it():
    assert onnxruntime_provider("cpu") == ("cpu", 0)
    assert onnxruntime_provider("cuda:2") == ("cuda", 2)
    assert onnxruntime_provider("cuda:1", "tensorrt") == ("tensorrt", 1)
    for device, provider in (("cpu", "tensorrt"), ("cpu", "cuda"), ("cuda", "cpu")):
        with pytest.raises(BackendError, match=f"provider {provider!r} on device {device!r}"):
            onnxruntime_provider(device, provider)
    with pytest.raises(BackendError, match="provider 'trt': expected one of cpu, cuda, tensorrt"):
        onnxruntime_provider("cuda", "trt")


def test_a_provider_is_refused_for_the_native_tensorrt_backend():
    with pytest.raises(BackendError, match="applies to the onnxruntime backend only"):
        make_backend(None, "tensorrt", "cuda:0", "tensorrt")


@pytest.mark.parametrize("parser", [stream.build_parser, calibrate.build_parser, soak.build_parser])
def test_commands_that_run_a_model_folder_share_the_flags(parser):
    required = ["--model", "m", "--images", "i"] if parser is calibrate.build_parser else ["--model", "m"]
    flags = ["--backend", "onnxruntime", "--device", "cuda:1", "--provider", "tensorrt", "--batch-size", "4"]
    args = parser().parse_args([*required, *flags])
    assert (args.backend, args.device, args.provider, args.batch_size) == ("onnxruntime", "cuda:1", "tensorrt", 4)
    args = parser().parse_args(required)
    assert (args.backend, args.device, args.provider) == ("onnxruntime", None, None)
