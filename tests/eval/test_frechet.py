"""Fréchet distances against closed forms of known Gaussians; CLIP-space FD; FID's gate."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from gdmd.eval import frechet
from gdmd.eval.frechet import (
    FIDUnavailableError,
    FrechetError,
    clip_features,
    clip_frechet_distance,
    fid_between_folders,
    frechet_distance,
    frechet_distance_from_statistics,
    read_image_folder,
)
from gdmd.rewards.aesthetic import load_clip_image_embedder
from gdmd.testing.tiny_rewards import save_tiny_clip

METHODS = ("scipy", "eigh")


def _rotation(angle):
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


@pytest.mark.parametrize("method", METHODS)
def test_diagonal_gaussians_by_hand(method):
    # N(0, diag(1, 4)) and N((1, 1), diag(4, 9)): |dmu|^2 = 2, sum (sqrt a - sqrt b)^2 = 1 + 1.
    value = frechet_distance_from_statistics(
        np.zeros(2), np.diag([1.0, 4.0]), np.ones(2), np.diag([4.0, 9.0]), method=method
    )
    assert value == pytest.approx(4.0, abs=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_non_commuting_covariances_by_hand(method):
    # S_a = 4 I against S_b = R diag(1, 9) R^T: tr (S_a S_b)^1/2 = 2 tr S_b^1/2 = 2 (1 + 3),
    # FD = 8 + 10 - 16 = 2. Rotating both diagonal covariances of the first test alike
    # (full, non-diagonal matrices) must leave that case's covariance term, 2, unchanged.
    rotated = _rotation(0.7) @ np.diag([1.0, 9.0]) @ _rotation(0.7).T
    value = frechet_distance_from_statistics(
        np.zeros(2), 4 * np.eye(2), np.zeros(2), rotated, method=method
    )
    assert value == pytest.approx(2.0, abs=1e-10)
    same_rotation = frechet_distance_from_statistics(
        np.zeros(2),
        _rotation(0.3) @ np.diag([1.0, 4.0]) @ _rotation(0.3).T,
        np.zeros(2),
        _rotation(0.3) @ np.diag([4.0, 9.0]) @ _rotation(0.3).T,
        method=method,
    )
    assert same_rotation == pytest.approx(2.0, abs=1e-10)


def test_the_two_methods_agree_on_random_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(64, 64)), rng.normal(size=(64, 64))
    sigma_a, sigma_b = a @ a.T / 64, b @ b.T / 64
    mean_a, mean_b = rng.normal(size=64), rng.normal(size=64)
    scipy_value = frechet_distance_from_statistics(mean_a, sigma_a, mean_b, sigma_b, method="scipy")
    eigh_value = frechet_distance_from_statistics(mean_a, sigma_a, mean_b, sigma_b, method="eigh")
    assert scipy_value == pytest.approx(eigh_value, rel=1e-8)


def test_samples_of_known_gaussians_converge_to_the_closed_form():
    rng = np.random.default_rng(1)
    cov_b = _rotation(0.7) @ np.diag([1.0, 9.0]) @ _rotation(0.7).T
    a = rng.multivariate_normal([0.0, 0.0], 4 * np.eye(2), size=200_000)
    b = rng.multivariate_normal([1.0, -1.0], cov_b, size=200_000)
    assert frechet_distance(a, b) == pytest.approx(2.0 + 2.0, abs=0.08)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_fewer_samples_than_dimensions_stays_finite():
    # 20 CLIP-like embeddings of width 64: singular covariances, as a small evaluation has.
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5
    eigh_value = frechet_distance(a, b, method="eigh")
    assert np.isfinite(eigh_value) and eigh_value > 0
    assert frechet_distance(a, a, method="eigh") == pytest.approx(0.0, abs=1e-6)


def test_bad_features_are_refused():
    with pytest.raises(FrechetError, match=r"expected features \[N >= 2, D\], got shape \(1, 3\)"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(FrechetError, match="different widths: 3 and 4"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 4)))
    with pytest.raises(FrechetError, match="non-finite"):
        frechet_distance(np.full((4, 3), np.nan), np.zeros((4, 3)))
    with pytest.raises(FrechetError, match="method must be"):
        frechet_distance(np.eye(3), np.eye(3), method="svd")


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    directory = save_tiny_clip(tmp_path_factory.mktemp("clip"), image_size=32, patch_size=8)
    return load_clip_image_embedder(str(directory), who="test")


def _save_pngs(folder, images):
    folder.mkdir()
    for index, image in enumerate(images):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"{index:03d}.png")
    return folder


def test_clip_features_of_mixed_sizes_match_one_by_one(embedder):
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 32, 32, generator=generator) for _ in range(3)]
    images.insert(1, torch.rand(3, 48, 40, generator=generator))
    features = clip_features(images, embedder, batch_size=2)
    assert features.shape == (4, embedder.dim) and features.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-6)
    for index, image in enumerate(images):
        alone = clip_features(image[None], embedder)
        np.testing.assert_allclose(features[index], alone[0], atol=1e-5)


def test_clip_frechet_distance_from_tensors_and_folders(embedder, tmp_path):
    generator = torch.Generator().manual_seed(1)
    dark = torch.rand(12, 3, 32, 32, generator=generator) * 0.3
    bright = 0.7 + torch.rand(12, 3, 32, 32, generator=generator) * 0.3
    same = clip_frechet_distance(dark, dark, embedder)
    apart = clip_frechet_distance(dark, bright, embedder)
    assert same == pytest.approx(0.0, abs=1e-6) and apart > 1e-3
    # A reference folder: the PNGs hold the images to 1/255, so the distance barely moves.
    folder = _save_pngs(tmp_path / "reference", list(bright))
    assert len(read_image_folder(folder)) == 12
    from_folder = clip_frechet_distance(dark, folder, embedder)
    assert from_folder == pytest.approx(apart, rel=0.05)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FrechetError, match="does not exist"):
        read_image_folder(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FrechetError, match="holds no images"):
        read_image_folder(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(FrechetError, match="cannot read the image .*broken.png"):
        read_image_folder(tmp_path)


def test_fid_without_a_library_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(frechet.importlib.util, "find_spec", lambda name: None)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(FIDUnavailableError) as err:
        fid_between_folders(tmp_path / "a", tmp_path / "b")
    message = str(err.value)
    assert "clean-fid is not installed; torch-fidelity is not installed" in message
    assert "inception-2015-12-05.pt" in message and "torchvision" in message
    assert "clip_frechet_distance" in message


def test_fid_uses_clean_fid_only_with_its_weights(tmp_path, monkeypatch):
    calls = []

    def compute_fid(a, b, **kw):
        calls.append((a, b, kw))
        return 1.5

    fid_module = types.SimpleNamespace(compute_fid=compute_fid)
    monkeypatch.setitem(sys.modules, "cleanfid", types.SimpleNamespace(fid=fid_module))
    monkeypatch.setitem(sys.modules, "cleanfid.fid", fid_module)
    monkeypatch.setattr(
        frechet.importlib.util, "find_spec", lambda name: object() if name == "cleanfid" else None
    )
    weights = tmp_path / "inception-2015-12-05.pt"
    monkeypatch.setattr(frechet, "_clean_fid_weights", lambda: weights)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(FIDUnavailableError, match="clean-fid is installed but .* is missing"):
        fid_between_folders(tmp_path / "a", tmp_path / "b")
    assert calls == []
    weights.write_bytes(b"weights")
    assert fid_between_folders(tmp_path / "a", tmp_path / "b") == 1.5
    assert calls[0][0] == str(tmp_path / "a") and calls[0][2]["mode"] == "clean"
