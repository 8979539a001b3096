"""Prompts, text tokenizers and image preprocessing for OpenVLA-architecture policies.

The small models use a word-level ``tokenizers`` tokenizer built in code over the LIBERO
instruction vocabulary (plus common words); its last 256 ids are the action tokens. A real
openvla checkpoint brings its own ``tokenizer.json`` (Llama SentencePiece, BOS added).
"""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from vla_rl_ros.core.envs.base import PROPRIO_DIM
from vla_rl_ros.core.policy.architecture import VLAArchitecture

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
"""Ids 0..3 of the small tokenizers: pad, BOS, EOS, unknown."""

COMMON_WORDS = """
in out what action should the robot take to a an and at by for from of on onto off into inside
under over above below near next between behind front back left right top bottom middle center
side up down pick place put push pull open close turn lift move stack grab grasp drop set it them
this that these those its is be with then both all one two three first second other red green
blue yellow black white brown orange purple pink gray grey wooden metal plastic glass small big
large tall short cup mug bowl plate pan pot tray basket box drawer cabinet shelf rack table desk
stove microwave sink door lid handle knob button bottle can jar block cube ball toy book caddy
""".split()


STATE_RANGE_CM = 60
"""State words are whole centimetres clipped to 0..60 (in LIBERO's recorded demos the hand height
proprio[2] spans 1..28 cm and the gripper opening 4..8 cm)."""
STATE_VOCABULARY = "state gripper height " + " ".join(str(n) for n in range(STATE_RANGE_CM + 1))
"""Words a state-prompt model's tokenizer must know (added to its vocabulary by ``VLAPolicy.create``)."""


def state_words(proprio: np.ndarray) -> str:
    """The robot state as prompt words: gripper opening and hand height, whole centimetres.

    Why words in the prompt: from one 128 px agentview frame a small VLA cannot tell an open
    gripper above an object from a closed one holding it, and imitation then lifts too early
    (docs/envs.md has the measurement). Words need no new module, so the OpenVLA architecture
    and checkpoint format stay exactly as they are.
    """
    opening = int(np.clip(round(float(proprio[6] - proprio[7]) * 100), 0, STATE_RANGE_CM))
    height = int(np.clip(round(float(proprio[2]) * 100), 0, STATE_RANGE_CM))
    return f"state gripper {opening} height {height}"


def check_proprio(proprio: object, batch: int) -> np.ndarray:
    """``proprio`` as float [batch, >= 8], finite; a clear error otherwise."""
    if proprio is None:
        raise ValueError("this policy reads the robot state (architecture state_prompt): pass proprio "
                         f"[B, {PROPRIO_DIM}] with the images")
    array = np.asarray(proprio, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != batch or array.shape[1] < PROPRIO_DIM:
        raise ValueError(f"proprio must have shape [{batch}, >= {PROPRIO_DIM}] (LIBERO layout), "
                         f"got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError("proprio contains NaN or inf")
    return array


def prompt_for(instruction: str) -> str:
    """OpenVLA's prompt for one instruction (lower-cased, as the original)."""
    return f"In: What action should the robot take to {instruction.lower()}?\nOut:"


def libero_instructions() -> list[str]:
    """Every instruction of LIBERO's benchmark suites (empty when LIBERO is not installed)."""
    # LIBERO prints "[info] ..." lines on stdout; keep stdout clean for JSON-printing commands.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            from libero.libero import benchmark
        except ImportError:
            return []
        instructions: list[str] = []
        for make_suite in benchmark.get_benchmark_dict().values():
            try:
                suite = make_suite()
            except Exception:  # a broken optional suite must not block building a vocabulary
                continue
            instructions.extend(suite.get_task(i).language for i in range(suite.n_tasks))
    return instructions


def _words(text: str) -> list[str]:
    # The same split as the tokenizer's pre-tokenizer (Whitespace: \w+ or runs of punctuation).
    return re.findall(r"\w+|[^\w\s]+", text.lower())


def build_word_tokenizer(instructions: Iterable[str], n_action_tokens: int = 256) -> Tokenizer:
    """Word-level tokenizer: specials, prompt + instruction words, then the action ids LAST."""
    vocab_words = list(SPECIAL_TOKENS)
    seen = set(vocab_words)
    # Words of whole prompts, so punctuation runs such as ")?" are in the vocabulary too.
    prompt_words = [w for text in instructions for w in _words(prompt_for(text))]
    for word in _words(prompt_for("x")) + COMMON_WORDS + prompt_words:
        if word not in seen:
            seen.add(word)
            vocab_words.append(word)
    vocab_words += [f"<act_{i}>" for i in range(n_action_tokens)]
    vocab = {word: index for index, word in enumerate(vocab_words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """``tokenizer.json`` of a saved policy or openvla checkpoint, with a clear error if absent."""
    path = Path(directory) / "tokenizer.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    if (Path(directory) / "tokenizer.model").is_file():
        # A SentencePiece-only Llama checkpoint: let transformers convert it (local files only).
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True).backend_tokenizer
    raise FileNotFoundError(f"{path} not found: a policy directory needs its tokenizer.json")


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


class Processor:
    """Instructions and camera images -> left-padded ``input_ids``/``attention_mask`` and pixels."""

    def __init__(self, arch: VLAArchitecture, tokenizer: Tokenizer, resize_images: bool = True,
                 center_crop_area: float = 1.0) -> None:
        self.arch = arch
        self.tokenizer = tokenizer
        self.resize_images = resize_images
        self.center_crop_area = center_crop_area
        mean = list(arch.featurizer.mean) + list(arch.fused_featurizer.mean)
        std = list(arch.featurizer.std) + list(arch.fused_featurizer.std)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def prompt_ids(self, instruction: str, state: str = "") -> list[int]:
        """Token ids of one prompt: BOS, prompt words, then the suffix ids if missing.

        The prompt's words are the instruction followed by the ``state`` words, if any.
        """
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"instruction {instruction!r} is empty: every observation needs a task "
                             "instruction")
        text = f"{instruction} {state}" if state else instruction
        ids = list(self.tokenizer.encode(prompt_for(text)).ids)
        if not ids or ids[0] != self.arch.bos_token_id:
            ids = [self.arch.bos_token_id] + ids
        suffix = list(self.arch.prompt_suffix_ids)
        if suffix and ids[-len(suffix):] != suffix:
            ids += suffix
        return ids

    def state_texts(self, count: int, proprio: object = None) -> list[str]:
        """The state words of each of ``count`` observations.

        A model without ``state_prompt`` gets '' for each and ignores ``proprio`` (so callers may
        always pass it).
        """
        if not self.arch.state_prompt:
            return [""] * count
        return [state_words(row) for row in check_proprio(proprio, count)]

    def text(self, instructions: Sequence[str], device: torch.device | str = "cpu", proprio: object = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``input_ids`` [B, T] and ``attention_mask`` [B, T] for B instructions.

        ``proprio`` [B, 8] is required by a state-prompt model, ignored otherwise.
        """
        if isinstance(instructions, str) or len(instructions) == 0:
            raise ValueError("instructions must be a non-empty list of strings (one per observation)")
        states = self.state_texts(len(instructions), proprio)
        rows = [self.prompt_ids(text, state) for text, state in zip(instructions, states)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.arch.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        return ids.to(device), mask.to(device)

    def pixels(self, images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 [B, H, W, 3] -> normalised float32 [B, 6, S, S] (DINO and SigLIP stacked on channels)."""
        if not isinstance(images, np.ndarray):
            raise TypeError(f"images must be a numpy uint8 array [B, H, W, 3], got {type(images).__name__}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (0..255), got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must have shape [B, H, W, 3], got {images.shape}")
        images = center_crop(images, self.center_crop_area)
        size = self.arch.image_size
        height, width = images.shape[1:3]
        if (height, width) != (size, size):
            if not self.resize_images:
                raise ValueError(f"images are {height}x{width} but the policy expects {size}x{size} "
                                 "(policy.resize_images is false)")
            if min(height, width) < 16:
                raise ValueError(f"images of {height}x{width} pixels are too small (at least 16x16)")
            # OpenVLA's resize-naive: bicubic to a square, aspect ratio not kept.
            images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC))
                               for im in images])
        # uint8 crosses to the device (4x less traffic than float); same op order as OpenVLA's
        # ToTensor + Normalize, so values are bit-identical to a numpy/torchvision pipeline.
        frames = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        scaled = frames.permute(0, 3, 1, 2).float().div(255.0)
        mean = torch.from_numpy(self.mean).to(scaled.device).view(1, 6, 1, 1)
        std = torch.from_numpy(self.std).to(scaled.device).view(1, 6, 1, 1)
        return torch.cat([scaled, scaled], dim=1).sub(mean).div(std).contiguous()
