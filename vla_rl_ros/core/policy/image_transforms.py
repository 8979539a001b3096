"""Image preprocessing of OpenVLA-architecture policies: the backbones' transforms and LIBERO's.

Per backbone, the checkpoint processor's resize, centre crop and normalisation
(``preprocessor_config.json``, :func:`transforms_from_preprocessor`); before them, the optional
steps of OpenVLA's LIBERO evaluation: a JPEG round trip, a Lanczos resize and a centre crop of a
fraction of the area. :class:`vla_rl_ros.core.policy.processor.Processor` applies them in that order.
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from PIL import Image

from vla_rl_ros.core.config_io import ConfigError
from vla_rl_ros.core.policy.architecture import ViTSpec, VLAArchitecture


# ----------------------------------------------------------------------------- image transforms
PIL_FILTERS = {0: Image.NEAREST, 1: Image.LANCZOS, 2: Image.BILINEAR, 3: Image.BICUBIC, 4: Image.BOX,
               5: Image.HAMMING}
"""PIL filter codes, as torchvision's ``pil_modes_mapping`` writes them into preprocessor_config.json."""
FILTER_NAMES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


@dataclass(frozen=True)
class BackboneTransform:
    """One backbone's part of the checkpoint processor: resize, centre crop, /255, normalise.

    As OpenVLA's ``PrismaticImageProcessor`` applies it to a PIL image (torchvision functional rules).
    """

    resize: tuple[int, ...]
    """(height, width), or (shorter side,) keeping the aspect ratio."""
    interpolation: int
    """PIL filter code (3 = bicubic)."""
    crop: tuple[int, int]
    """Centre crop (height, width) after the resize."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def geometry(self) -> tuple:
        """Everything before the normalisation (two backbones with equal geometry share the frames)."""
        return self.resize, self.interpolation, self.crop


def default_transform(spec: ViTSpec) -> BackboneTransform:
    """OpenVLA's ``resize-naive``: bicubic to the ViT's square size, the architecture's mean/std."""
    size = spec.image_size
    return BackboneTransform((size, size), 3, (size, size), tuple(spec.mean), tuple(spec.std))


def transforms_from_preprocessor(data: Mapping[str, Any], arch: VLAArchitecture,
                                 source: str = "preprocessor_config.json") -> tuple[BackboneTransform, ...]:
    """The two backbones' transforms stored in an openvla ``preprocessor_config.json``.

    Reads what the original processor runs: ``tvf_resize_params``, ``tvf_crop_params`` and
    ``tvf_normalize_params`` (openvla-7b stores the DINOv2 mean/std bf16-rounded there), else
    ``input_sizes``/``interpolations``/``means``/``stds`` with ``image_resize_strategy``.
    Letterboxing is refused; so is a crop that is not the ViTs' input size.
    """
    def fail(message: str) -> ConfigError:
        return ConfigError(f"{source}: {message}")

    if data.get("tvf_do_letterbox") or data.get("image_resize_strategy") == "letterbox":
        raise fail("letterbox resizing is not supported (openvla-7b uses image_resize_strategy "
                   "'resize-naive')")
    count = 2
    stored = ("tvf_resize_params", "tvf_crop_params", "tvf_normalize_params")
    try:
        if all(key in data for key in stored):
            resizes, crops, norms = (list(data[key]) for key in stored)
            if not len(resizes) == len(crops) == len(norms) == count:
                raise fail(f"tvf_* lists must have {count} entries (one per backbone)")
            sizes = [tuple(int(v) for v in ([r["size"]] if isinstance(r["size"], int) else r["size"]))
                     for r in resizes]
            filters = [r.get("interpolation", 3) for r in resizes]
            crop_sizes = [tuple(int(v) for v in ([c["output_size"]] * 2 if isinstance(c["output_size"], int)
                                                 else c["output_size"])) for c in crops]
            means = [n["mean"] for n in norms]
            stds = [n["std"] for n in norms]
        else:
            strategy = data.get("image_resize_strategy", "resize-naive")
            if strategy not in ("resize-naive", "resize-crop"):
                raise fail(f"image_resize_strategy {strategy!r} is not supported")
            inputs = [tuple(int(v) for v in size[-2:]) for size in data["input_sizes"]]
            sizes = [size if strategy == "resize-naive" else (size[-1],) for size in inputs]
            filters = list(data.get("interpolations") or ["bicubic"] * count)
            crop_sizes, means, stds = inputs, list(data["means"]), list(data["stds"])
        if not len(sizes) == len(filters) == len(means) == len(stds) == count:
            raise fail(f"needs {count} entries per setting (one per backbone)")
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise fail(f"malformed ({type(err).__name__}: {err})") from None
    transforms = []
    for index in range(count):
        code = filters[index]
        code = FILTER_NAMES.get(code) if isinstance(code, str) else code
        if code not in PIL_FILTERS:
            raise fail(f"interpolation {filters[index]!r} of backbone {index} is not a PIL filter")
        mean = tuple(float(v) for v in means[index])
        std = tuple(float(v) for v in stds[index])
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise fail(f"backbone {index}: mean {list(mean)} / std {list(std)} must be 3 values, std > 0")
        if len(sizes[index]) not in (1, 2) or len(crop_sizes[index]) != 2:
            raise fail(f"backbone {index}: resize {list(sizes[index])} / crop {list(crop_sizes[index])}")
        if crop_sizes[index] != (arch.image_size, arch.image_size):
            raise fail(f"backbone {index} produces {crop_sizes[index][0]}x{crop_sizes[index][1]} frames but "
                       f"the model's ViTs take {arch.image_size}x{arch.image_size}")
        transforms.append(BackboneTransform(sizes[index], int(code), crop_sizes[index], mean, std))
    return tuple(transforms)


def resized_shape(height: int, width: int, resize: tuple[int, ...]) -> tuple[int, int]:
    """torchvision's output size: (h, w) as given, or the shorter side scaled to ``resize[0]``."""
    if len(resize) == 2:
        return int(resize[0]), int(resize[1])
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = int(resize[0]), int(int(resize[0]) * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def apply_geometry(images: np.ndarray, transform: BackboneTransform, allow_resize: bool) -> np.ndarray:
    """uint8 [B, H, W, 3] -> uint8 [B, h, w, 3]: the transform's resize, then its centre crop.

    The resize is PIL's (skipped when the size already fits, as torchvision does); the crop offsets
    are rounded as torchvision's ``center_crop``.
    """
    height, width = images.shape[1:3]
    target = resized_shape(height, width, transform.resize)
    if (height, width) != target:
        if not allow_resize:
            raise ValueError(f"images are {height}x{width} but the policy expects {target[0]}x{target[1]} "
                             "(policy.resize_images is false)")
        if min(height, width) < 16:
            raise ValueError(f"images of {height}x{width} pixels are too small (at least 16x16)")
        mode = PIL_FILTERS[transform.interpolation]
        images = np.stack([np.asarray(Image.fromarray(im).resize((target[1], target[0]), mode))
                           for im in images])
    crop_h, crop_w = transform.crop
    height, width = images.shape[1:3]
    if (height, width) == (crop_h, crop_w):
        return images
    if height < crop_h or width < crop_w:
        raise ValueError(f"frames of {height}x{width} after the resize are smaller than the "
                         f"{crop_h}x{crop_w} crop")
    top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
    return images[:, top:top + crop_h, left:left + crop_w]


def jpeg_round_trip(images: np.ndarray, quality: int = 95) -> np.ndarray:
    """Encode each uint8 frame as JPEG and decode it again, as OpenVLA's LIBERO evaluation does.

    Its training frames were stored as JPEG. Quality 95 and 4:2:0 chroma are ``tf.image.encode_jpeg``'s
    defaults; TF decodes with libjpeg's fast integer IDCT and PIL with the accurate one, so a pixel
    can differ from TF's by a level or two.
    """
    out = np.empty_like(images)
    for index, frame in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
        buffer.seek(0)
        out[index] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def _lanczos3(x: np.ndarray) -> np.ndarray:
    # TF's LanczosKernelFunc(3): 3 sin(pi x) sin(pi x / 3) / (pi x)^2, 1 near 0, 0 beyond the radius.
    x = np.abs(x).astype(np.float32)
    pi = np.float32(3.14159265359)
    safe = np.where(x <= 1e-3, np.float32(1.0), x)
    value = 3 * np.sin(pi * safe) * np.sin(pi * safe / 3) / (pi * pi * safe * safe)
    return np.where(x > 3, np.float32(0.0), np.where(x <= 1e-3, np.float32(1.0), value)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def lanczos3_weights(out_size: int, in_size: int) -> np.ndarray:
    """[out, in] float32 resampling matrix of ``tf.image.resize(method='lanczos3', antialias=True)``.

    TF's ``scale_and_translate``: output pixel x samples at (x + 0.5) / scale; when shrinking the
    kernel is widened by 1 / scale (antialiasing); the taps are clamped to the image and each row
    is normalised to sum 1.
    """
    scale = np.float32(out_size) / np.float32(in_size)
    inv_scale = np.float32(1.0) / scale
    kernel_scale = max(inv_scale, np.float32(1.0))
    reach = np.float32(3.0) * kernel_scale
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    for x in range(out_size):
        sample = np.float32(x + 0.5) * inv_scale
        start = min(max(int(np.ceil(sample - reach - np.float32(0.5))), 0), in_size - 1)
        end = min(max(int(np.floor(sample + reach - np.float32(0.5))), 0), in_size - 1) + 1
        taps = _lanczos3((np.arange(start, end, dtype=np.float32) + np.float32(0.5) - sample) / kernel_scale)
        total = taps.sum(dtype=np.float32)
        if abs(total) >= 1000 * np.finfo(np.float32).tiny:
            weights[x, start:end] = taps / total
    return weights


def lanczos_resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [B, H, W, 3] -> uint8 [B, size, size, 3], as OpenVLA's LIBERO evaluation resizes frames.

    ``tf.image.resize(..., 'lanczos3', antialias=True)`` (float32, separable), then round half to
    even and clip to 0..255. Frames already of that size are returned unchanged (TF's result equals
    them).
    """
    height, width = images.shape[1:3]
    if (height, width) == (size, size):
        return images
    rows, cols = lanczos3_weights(size, height), lanczos3_weights(size, width)
    frames = images.astype(np.float32)
    resized = np.einsum("oh,bhwc->bowc", rows, frames, optimize=True)
    resized = np.einsum("pw,bowc->bopc", cols, resized, optimize=True)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def center_crop(images: np.ndarray, area: float) -> np.ndarray:
    """OpenVLA's LIBERO test-time crop: keep the central ``area`` fraction, resize back (uint8 in and out).

    Follows ``tf.image.crop_and_resize`` (bilinear, corner-aligned sampling) on a box of side
    ``sqrt(area)`` and TF's float->uint8 conversion (x * 255.5, truncated), as OpenVLA's
    ``run_libero_eval`` does for checkpoints trained with random-crop augmentation.
    """
    if area >= 1.0:
        return images
    batch, height, width, _ = images.shape
    side = float(np.sqrt(area))
    offset = (1.0 - side) / 2.0

    def sample_points(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        points = offset * (size - 1) + np.arange(size) * side * (size - 1) / max(size - 1, 1)
        low = np.floor(points).astype(np.int64)
        high = np.minimum(np.ceil(points).astype(np.int64), size - 1)
        return low, high, (points - low).astype(np.float32)

    top, bottom, y_lerp = sample_points(height)
    left, right, x_lerp = sample_points(width)
    frames = images.astype(np.float32) / 255.0
    x_lerp = x_lerp[None, None, :, None]
    rows_top, rows_bottom = frames[:, top], frames[:, bottom]
    upper = rows_top[:, :, left] + (rows_top[:, :, right] - rows_top[:, :, left]) * x_lerp
    lower = rows_bottom[:, :, left] + (rows_bottom[:, :, right] - rows_bottom[:, :, left]) * x_lerp
    cropped = np.clip(upper + (lower - upper) * y_lerp[None, :, None, None], 0.0, 1.0)
    return (cropped * 255.5).astype(np.uint8)
