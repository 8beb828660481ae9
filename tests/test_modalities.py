"""Modality registry and the visualisation codecs: arrays -> visualisations -> arrays."""

from __future__ import annotations

import numpy as np
import pytest

from unityvideo_diffusers.modalities import (
    decode_depth,
    decode_flow,
    decode_segmentation,
    encode_depth,
    encode_flow,
    encode_segmentation,
    modality_prompt,
    register_modality,
    resolve_modality,
)


def as_video_bytes(visualisation):
    """What survives a trip through an 8-bit video frame."""
    return np.round(visualisation * 255) / 255


def test_released_prompts_and_aliases():
    assert (
        modality_prompt("flow")
        == "optical flow visualization showing motion direction with color and magnitude with intensity."
    )
    assert resolve_modality("Optical-Flow") == "raft" and resolve_modality("pose") == "skeleton"
    assert resolve_modality("normals") == "normal" and resolve_modality("edges") == "edge"  # ShapesWorld's
    with pytest.raises(ValueError, match="Unknown modality 'thermal'. Known: depth, densepose, raft"):
        resolve_modality("thermal")


def test_register_a_new_modality():
    register_modality("normal_test", "surface normal visualization.", aliases=("normals_test",))
    assert resolve_modality("normals_test") == "normal_test"
    with pytest.raises(ValueError, match="already registered"):
        register_modality("normal_test", "again")
    with pytest.raises(ValueError, match="identifier"):
        register_modality("bad name", "x")


def test_depth_round_trip():
    disparity = np.random.default_rng(0).random((3, 16, 16))
    visualisation = encode_depth(disparity, inverse=False)
    normalised = (disparity - disparity.min()) / (disparity.max() - disparity.min())
    assert np.abs(decode_depth(visualisation) - normalised).max() < 1e-9
    assert np.abs(decode_depth(as_video_bytes(visualisation)) - normalised).max() < 0.01
    # metric depth: near is warm (red channel high), far is cool (blue high)
    colours = encode_depth(np.array([[1.0, 100.0]]))
    assert colours[0, 0, 0] > colours[0, 0, 2] and colours[0, 1, 2] > colours[0, 1, 0]


def test_flow_round_trip():
    flow = np.random.default_rng(1).normal(size=(2, 16, 16, 2))
    largest = np.sqrt(np.square(flow).sum(-1)).max()
    visualisation = encode_flow(flow)
    assert np.abs(decode_flow(visualisation, largest) - flow).max() < 1e-9
    end_point_error = np.sqrt(np.square(decode_flow(as_video_bytes(visualisation), largest) - flow).sum(-1))
    assert end_point_error.mean() < 0.01 * largest
    # the Middlebury convention: zero motion is white, motion to the right (+x) is red-ish
    assert np.allclose(encode_flow(np.zeros((1, 1, 2)), max_magnitude=1.0), 1.0)
    right = encode_flow(np.array([[[1.0, 0.0]]]))[0, 0]
    assert right[0] > 0.9 and max(right[1], right[2]) < 0.2


def test_segmentation_round_trip():
    labels = np.random.default_rng(2).integers(0, 6, size=(2, 8, 8))
    assert np.array_equal(decode_segmentation(as_video_bytes(encode_segmentation(labels))), labels)
    with pytest.raises(ValueError, match="Labels must be in"):
        encode_segmentation(np.array([[99]]))
