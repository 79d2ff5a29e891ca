"""Fréchet distances between sets of images: in CLIP image-embedding space, and FID.

The Fréchet distance between Gaussians fitted to two feature sets (Heusel et al., 2017,
"GANs trained by a two time-scale update rule converge to a local Nash equilibrium") is

    FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))

:func:`clip_frechet_distance` computes it on L2-normalised CLIP image embeddings (the features
the ``aesthetic`` reward reads; student against teacher, or against a folder of reference
images). It needs only transformers and the CLIP weights. It is **not** FID and its values are
not comparable with published FIDs: those use the Inception-v3 network of the TensorFlow
release. :func:`fid_between_folders` computes real FID through clean-fid or torch-fidelity
when one of them is installed and its Inception weights are on disk; gdmd does not depend on
either (both need torchvision, which cannot sit beside gdmd's torch), so install one in an
environment of its own.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gdmd.errors import GdmdError

if TYPE_CHECKING:
    import torch

    from gdmd.rewards.aesthetic import CLIPImageEmbedder

__all__ = [
    "CLEAN_FID_WEIGHTS",
    "TORCH_FIDELITY_WEIGHTS",
    "FIDUnavailableError",
    "FrechetError",
    "clip_features",
    "clip_frechet_distance",
    "fid_between_folders",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "gaussian_statistics",
    "read_image_folder",
]

logger = logging.getLogger(__name__)

#: Image file extensions read from folders.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: clean-fid's Inception weights: the file name it looks for in the temporary directory, and
#: where it comes from.
CLEAN_FID_WEIGHTS = (
    "inception-2015-12-05.pt",
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
    "inception-2015-12-05.pt",
)
#: torch-fidelity's Inception weights: the file name in torch hub's checkpoints folder, and
#: where it comes from.
TORCH_FIDELITY_WEIGHTS = (
    "weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth",
)


class FrechetError(GdmdError):
    """Features or images that a Fréchet distance cannot be computed from."""

    exit_code = 2


class FIDUnavailableError(GdmdError):
    """Neither clean-fid nor torch-fidelity is usable here (not installed, or no weights)."""

    exit_code = 2


def _as_float64(features: Any, name: str) -> np.ndarray:
    if hasattr(features, "detach"):
        features = features.detach().to("cpu").double().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise FrechetError(f"{name}: expected features [N >= 2, D], got shape {array.shape}")
    if not np.isfinite(array).all():
        raise FrechetError(f"{name}: the features hold non-finite values")
    return array


def gaussian_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased, ``N - 1``) of features ``[N, D]``."""
    array = _as_float64(features, "features")
    return array.mean(axis=0), np.atleast_2d(np.cov(array, rowvar=False))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix; eigenvalues below 0, which
    only rounding produces, are taken as 0."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _trace_sqrt_product_eigh(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    # tr (S_a S_b)^1/2 = tr (S_a^1/2 S_b S_a^1/2)^1/2: the two products are similar matrices,
    # and the second is symmetric PSD, so two symmetric eigendecompositions suffice and no
    # complex values appear even when S_a, S_b are singular (fewer images than dimensions).
    root_a = _sqrt_psd(sigma_a)
    values = np.linalg.eigvalsh(root_a @ sigma_b @ root_a)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def _trace_sqrt_product_scipy(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    from scipy import linalg

    # scipy's Schur-based sqrtm of the (non-symmetric) product, as pytorch-fid computes it;
    # a singular product can make it non-finite, and a small diagonal offset then helps.
    root = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(root).all():
        offset = np.eye(sigma_a.shape[0]) * 1e-6
        root = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    root = np.asarray(root)
    if np.iscomplexobj(root):
        imaginary = float(np.abs(np.diagonal(root).imag).max())
        scale = max(float(np.abs(np.diagonal(root).real).max()), 1.0)
        if imaginary > 1e-3 * scale:
            raise FrechetError(
                f"scipy's sqrtm returned a complex square root (imaginary part {imaginary:.3g}); "
                'the covariances are too ill-conditioned for it: use method="eigh"'
            )
        root = root.real
    return float(np.trace(root))


def frechet_distance_from_statistics(
    mean_a: np.ndarray,
    sigma_a: np.ndarray,
    mean_b: np.ndarray,
    sigma_b: np.ndarray,
    *,
    method: str = "auto",
) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2)``.

    ``method``: ``"scipy"`` (``scipy.linalg.sqrtm`` of ``S_a S_b``, the reference FID code's
    way), ``"eigh"`` (symmetric eigendecompositions, robust for singular covariances), or
    ``"auto"``: scipy when it is importable, else eigh. Rounding can make a distance of two
    identical sets a hair below 0; it is returned as 0.
    """
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
    dim = mean_a.shape[0]
    if mean_b.shape != (dim,) or sigma_a.shape != (dim, dim) or sigma_b.shape != (dim, dim):
        raise FrechetError(
            f"statistics of different sizes: means {mean_a.shape} and {mean_b.shape}, "
            f"covariances {sigma_a.shape} and {sigma_b.shape}"
        )
    if method == "auto":
        method = "scipy" if importlib.util.find_spec("scipy") is not None else "eigh"
    if method == "scipy":
        cross = _trace_sqrt_product_scipy(sigma_a, sigma_b)
    elif method == "eigh":
        cross = _trace_sqrt_product_eigh(sigma_a, sigma_b)
    else:
        raise FrechetError(f"method must be 'auto', 'scipy' or 'eigh', got {method!r}")
    value = float(((mean_a - mean_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b))
    return max(value - 2.0 * cross, 0.0)


def frechet_distance(features_a: Any, features_b: Any, *, method: str = "auto") -> float:
    """The Fréchet distance between Gaussians fitted to ``[N, D]`` and ``[M, D]`` features."""
    a = _as_float64(features_a, "first feature set")
    b = _as_float64(features_b, "second feature set")
    if a.shape[1] != b.shape[1]:
        raise FrechetError(f"feature sets of different widths: {a.shape[1]} and {b.shape[1]}")
    return frechet_distance_from_statistics(
        *gaussian_statistics(a), *gaussian_statistics(b), method=method
    )


def read_image_folder(folder: str | Path, *, limit: int | None = None) -> list[torch.Tensor]:
    """The images of ``folder`` (``.png``, ``.jpg``, ... in name order) as float ``[3, H, W]``
    tensors in ``[0, 1]``; at most ``limit`` of them."""
    import torch
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise FrechetError(f"image folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise FrechetError(
            f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError) as err:
            raise FrechetError(f"cannot read the image {file}: {err}") from None
        images.append(torch.from_numpy(array).permute(2, 0, 1).contiguous())
    return images


def clip_features(
    images: torch.Tensor | Sequence[torch.Tensor],
    embedder: CLIPImageEmbedder,
    *,
    batch_size: int = 32,
) -> np.ndarray:
    """Normalised CLIP image embeddings ``[N, D]`` (float64) of images in ``[0, 1]``.

    ``images`` is a batch ``[N, 3, H, W]`` or a list of ``[3, H, W]`` tensors of any sizes
    (images of one size are embedded together, ``batch_size`` at a time).
    """
    import torch

    items = list(images.unbind(0)) if isinstance(images, torch.Tensor) else list(images)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(items):
        if image.ndim != 3 or image.shape[0] != 3:
            raise FrechetError(f"image {index}: expected [3, H, W], got {list(image.shape)}")
        by_size.setdefault(tuple(image.shape), []).append(index)
    rows: list[np.ndarray | None] = [None] * len(items)
    with torch.no_grad():
        for indices in by_size.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                batch = torch.stack([items[i] for i in chunk])
                embedded = embedder(batch).double().cpu().numpy()
                for i, row in zip(chunk, embedded, strict=True):
                    rows[i] = row
    return np.stack([row for row in rows if row is not None])


def clip_frechet_distance(
    images_a: torch.Tensor | Sequence[torch.Tensor] | str | Path,
    images_b: torch.Tensor | Sequence[torch.Tensor] | str | Path,
    embedder: CLIPImageEmbedder,
    *,
    batch_size: int = 32,
    method: str = "auto",
) -> float:
    """The Fréchet distance between two image sets in ``embedder``'s CLIP space.

    Each set is a batch ``[N, 3, H, W]`` in ``[0, 1]``, a list of ``[3, H, W]`` images, or a
    folder of image files (a reference set). Build ``embedder`` with
    :func:`gdmd.rewards.aesthetic.load_clip_image_embedder`.
    """
    sets = [
        read_image_folder(images) if isinstance(images, (str, Path)) else images
        for images in (images_a, images_b)
    ]
    features = [clip_features(images, embedder, batch_size=batch_size) for images in sets]
    return frechet_distance(features[0], features[1], method=method)


def _clean_fid_weights() -> Path:
    return Path(tempfile.gettempdir()) / CLEAN_FID_WEIGHTS[0]


def _torch_fidelity_weights() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_WEIGHTS[0]


def fid_between_folders(
    folder_a: str | Path, folder_b: str | Path, *, device: str = "cpu", batch_size: int = 32
) -> float:
    """FID between two folders of images, by clean-fid (``mode="clean"``) or torch-fidelity.

    Used only when the library is importable **and** its Inception weights are already on
    disk (nothing is downloaded): clean-fid's ``inception-2015-12-05.pt`` in the temporary
    directory, torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` in torch hub's
    ``checkpoints`` folder. Otherwise :class:`FIDUnavailableError` says what is missing.
    """
    for folder in (folder_a, folder_b):
        if not Path(folder).is_dir():
            raise FrechetError(f"image folder {folder} does not exist or is not a folder")
    problems = []
    if importlib.util.find_spec("cleanfid") is None:
        problems.append("clean-fid is not installed")
    elif not _clean_fid_weights().is_file():
        problems.append(f"clean-fid is installed but {_clean_fid_weights()} is missing")
    else:
        from cleanfid import fid

        logger.info("FID by clean-fid (mode 'clean') with %s", _clean_fid_weights())
        return float(
            fid.compute_fid(
                str(folder_a),
                str(folder_b),
                mode="clean",
                device=device,
                batch_size=batch_size,
                num_workers=0,
            )
        )
    if importlib.util.find_spec("torch_fidelity") is None:
        problems.append("torch-fidelity is not installed")
    elif not _torch_fidelity_weights().is_file():
        problems.append(f"torch-fidelity is installed but {_torch_fidelity_weights()} is missing")
    else:
        import torch_fidelity

        logger.info("FID by torch-fidelity with %s", _torch_fidelity_weights())
        metrics = torch_fidelity.calculate_metrics(
            input1=str(folder_a),
            input2=str(folder_b),
            fid=True,
            cuda=device.startswith("cuda"),
            batch_size=batch_size,
            feature_extractor_weights_path=str(_torch_fidelity_weights()),
            verbose=False,
        )
        return float(metrics["frechet_inception_distance"])
    raise FIDUnavailableError(
        "FID needs clean-fid or torch-fidelity with its Inception weights on disk: "
        + "; ".join(problems)
        + ". Both need torchvision, which cannot be installed beside gdmd's torch: use a "
        "separate environment (`pip install clean-fid` and download "
        f"{CLEAN_FID_WEIGHTS[1]} into {tempfile.gettempdir()}{os.sep}, or "
        "`pip install torch-fidelity` and download "
        f"{TORCH_FIDELITY_WEIGHTS[1]} into {_torch_fidelity_weights().parent}{os.sep}). "
        "clip_frechet_distance measures a Fréchet distance in CLIP space without them."
    )
