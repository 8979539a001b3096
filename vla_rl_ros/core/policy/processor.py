"""Prompts, text tokenizers and image preprocessing for OpenVLA-architecture policies.

The small models use a word-level ``tokenizers`` tokenizer built in code over the LIBERO
instruction vocabulary (plus common words); its last 256 ids are the action tokens. A real
openvla checkpoint brings its own ``tokenizer.json`` (Llama, BOS added) or only a SentencePiece
``tokenizer.model`` (read with the ``sentencepiece`` library), and its ``preprocessor_config.json``
(resize, centre crop and the normalisation statistics the original processor runs).

Frames go through, in this order: an optional JPEG round trip and Lanczos resize (OpenVLA's LIBERO
evaluation), the optional centre crop, then per backbone the checkpoint processor's resize, crop
and normalisation (those steps live in ``image_transforms.py``).
"""
from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from vla_rl_ros.core.envs.base import PROPRIO_DIM
from vla_rl_ros.core.policy.architecture import VLAArchitecture
from vla_rl_ros.core.policy.image_transforms import (  # noqa: F401 - re-exported: the processor's API
    FILTER_NAMES, PIL_FILTERS, BackboneTransform, apply_geometry, center_crop, default_transform,
    jpeg_round_trip, lanczos3_weights, lanczos_resize, resized_shape, transforms_from_preprocessor)

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


@dataclass
class Encoding:
    """What :meth:`SentencePieceTokenizer.encode` returns (the ``ids`` of a ``tokenizers`` Encoding)."""

    ids: list[int]


class SentencePieceTokenizer:
    """A Llama ``tokenizer.model`` read with the ``sentencepiece`` library, the reference implementation.

    Offers the part of ``tokenizers.Tokenizer`` the policy uses. ``encode`` adds no BOS (the
    processor does); for OpenVLA's prompts the ids equal those of the checkpoint's ``tokenizer.json``
    (Llama's fast tokenizer), which a test checks against transformers' own conversion.
    """

    def __init__(self, model: bytes) -> None:
        import sentencepiece
        self.model = bytes(model)
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=self.model)

    def encode(self, text: str) -> Encoding:
        """Token ids of ``text`` (no BOS)."""
        return Encoding(list(self.sp.encode(text)))

    def get_vocab_size(self) -> int:
        """Pieces in the model (Llama-2: 32000; OpenVLA's <PAD> 32000 is outside it)."""
        return int(self.sp.get_piece_size())

    def token_to_id(self, token: str) -> int | None:
        """Id of a piece, None when the model has no such piece (sentencepiece would answer <unk>)."""
        index = int(self.sp.piece_to_id(token))
        return index if self.sp.id_to_piece(index) == token else None

    def id_to_token(self, index: int) -> str:
        """Piece of an id."""
        return str(self.sp.id_to_piece(int(index)))


TextTokenizer = Tokenizer | SentencePieceTokenizer
SENTENCEPIECE_SPACE = "\u2581"
"""The SentencePiece space piece that OpenVLA appends to every prompt (id 29871 in Llama-2)."""


def load_tokenizer(directory: str | Path) -> TextTokenizer:
    """The directory's ``tokenizer.json``, else its SentencePiece ``tokenizer.model``.

    Never reaches ``AutoTokenizer`` (which may offer remote code and prompt on stdin); without the
    ``sentencepiece`` package a ``tokenizer.model``-only directory is refused with a one-line error.
    """
    from vla_rl_ros.core.policy.model_dir import CheckpointError
    path = Path(directory) / "tokenizer.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    model = Path(directory) / "tokenizer.model"
    if model.is_file():
        try:
            import sentencepiece  # noqa: F401
        except ImportError:
            raise CheckpointError(f"{model} is a SentencePiece model but the sentencepiece package is "
                                  "missing: run tools/setup.sh, or add the checkpoint's "
                                  "tokenizer.json") from None
        try:
            return SentencePieceTokenizer(model.read_bytes())
        except Exception as err:  # sentencepiece raises RuntimeError/OSError with multi-line text
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{model} is not a readable SentencePiece model: {first_line}") from None
    raise FileNotFoundError(f"{path} not found: a policy directory needs its tokenizer.json "
                            "(or a SentencePiece tokenizer.model)")


def tokenizer_files(tokenizer: TextTokenizer) -> dict[str, str | bytes]:
    """File name -> contents that store ``tokenizer`` in a policy directory."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        return {"tokenizer.model": tokenizer.model}
    return {"tokenizer.json": tokenizer.to_str()}


def space_token_id(tokenizer: TextTokenizer) -> int | None:
    """Id of the SentencePiece space piece in ``tokenizer`` (29871 for Llama-2), None if absent."""
    return tokenizer.token_to_id(SENTENCEPIECE_SPACE)


class Processor:
    """Instructions and camera images -> left-padded ``input_ids``/``attention_mask`` and pixels.

    ``transforms``: each backbone's resize/crop/normalisation (default: OpenVLA's resize-naive with
    the architecture's mean/std; a checkpoint's ``preprocessor_config.json`` replaces them).
    ``jpeg_round_trip``, ``lanczos_resize`` and ``center_crop_area``: OpenVLA's LIBERO evaluation
    steps, applied in that order before the transforms (see :class:`PolicyConfig`).
    """

    def __init__(self, arch: VLAArchitecture, tokenizer: TextTokenizer, resize_images: bool = True,
                 center_crop_area: float = 1.0, transforms: Sequence[BackboneTransform] | None = None,
                 jpeg_round_trip: bool = False, lanczos_resize: bool = False) -> None:
        self.arch = arch
        self.tokenizer = tokenizer
        self.resize_images = resize_images
        self.center_crop_area = center_crop_area
        self.jpeg_round_trip = jpeg_round_trip
        self.lanczos_resize = lanczos_resize
        self.transforms = tuple(transforms or (default_transform(arch.featurizer),
                                               default_transform(arch.fused_featurizer)))
        if len(self.transforms) != 2:
            raise ValueError(f"need one image transform per backbone (2), got {len(self.transforms)}")
        self.mean = np.asarray([v for t in self.transforms for v in t.mean], dtype=np.float32)
        self.std = np.asarray([v for t in self.transforms for v in t.std], dtype=np.float32)

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

    def frames(self, images: np.ndarray) -> list[np.ndarray]:
        """The uint8 frames [B, S, S, 3] each backbone normalises, after every geometric step."""
        if not isinstance(images, np.ndarray):
            raise TypeError(f"images must be a numpy uint8 array [B, H, W, 3], got {type(images).__name__}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (0..255), got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must have shape [B, H, W, 3], got {images.shape}")
        if self.jpeg_round_trip:
            images = jpeg_round_trip(images)
        if self.lanczos_resize:
            if min(images.shape[1:3]) < 16:
                raise ValueError(f"images of {images.shape[1]}x{images.shape[2]} pixels are too small "
                                 "(at least 16x16)")
            images = lanczos_resize(images, self.arch.image_size)
        images = center_crop(images, self.center_crop_area)
        shared: dict[tuple, np.ndarray] = {}
        for transform in self.transforms:
            if transform.geometry not in shared:
                shared[transform.geometry] = apply_geometry(images, transform, self.resize_images)
        return [shared[t.geometry] for t in self.transforms]

    def pixels(self, images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """uint8 [B, H, W, 3] -> normalised float32 [B, 6, S, S] (DINO and SigLIP stacked on channels)."""
        frames = self.frames(images)
        # uint8 crosses to the device (4x less traffic than float); same op order as OpenVLA's
        # ToTensor + Normalize, so values are bit-identical to a numpy/torchvision pipeline.
        scaled = {}
        for array in frames:
            if id(array) not in scaled:
                tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
                scaled[id(array)] = tensor.permute(0, 3, 1, 2).float().div(255.0)
        stacked = torch.cat([scaled[id(array)] for array in frames], dim=1)
        mean = torch.from_numpy(self.mean).to(stacked.device).view(1, 6, 1, 1)
        std = torch.from_numpy(self.std).to(stacked.device).view(1, 6, 1, 1)
        return stacked.sub(mean).div(std).contiguous()
