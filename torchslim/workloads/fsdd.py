"""The ``fsdd-kws`` workload: spoken-digit recognition on the Free Spoken Digit Dataset (keyword spotting).

The data is a folder of 8 kHz mono 16-bit WAV files named ``{digit}_{speaker}_{index}.wav`` (FSDD: 6
speakers x 10 digits x 50 takes), given with ``--data DIR``; it is read, never copied. Each recording
becomes 40 log-mel bands x 101 frames (25 ms Hann window, 10 ms hop, the clip centred in 1 s), computed
once and cached under ``cache_dir()/fsdd`` keyed on the file list.

Splits: FSDD's official split (takes 0-4 test, 5-49 train) over five speakers, and every take of a
sixth speaker (``yweweler`` by default), never trained on, as the harder ``speaker_out`` split.

Models, 1-D convolutions over time with the mel bands as input channels, written as ``Conv2d`` with
``(k, 1)`` kernels on ``[B, C, T, 1]`` so BatchNorm folding and oneDNN's int8 convolutions apply:
the teacher is a wide depthwise-separable CNN (DS-CNN, Zhang et al. 2017, "Hello Edge: Keyword
Spotting on Microcontrollers"; 256 channels, 326 k parameters), the student the same network at 48
channels (21 k parameters, below Hello Edge's 38.6 k DS-CNN-S). Because they share the architecture,
the student can be carved out of the teacher by channel pruning (the ``kws-tiny`` recipe's first step
does exactly that, keeping the teacher's strongest channels) or built fresh with :func:`build_student`
and distilled.

Example:
    >>> import torch
    >>> build_student()(torch.zeros(2, N_MELS, FRAMES)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import wave
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import UnsafeInputError, UsageError
from torchslim.training import fit_
from torchslim.workloads.base import ShuffledBatches, Workload, cache_dir, cached_or_trained, save_atomic
from torchslim.workloads.datadir import data_path

__all__ = [
    "DSCNN",
    "FsddData",
    "FsddWorkload",
    "build_student",
    "build_teacher",
    "example_inputs",
    "load_features",
    "log_mel",
    "mel_filterbank",
    "parse_name",
    "read_wav",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 8000
N_FFT = 512  # zero-padded 200-sample window: finer bins so every low mel band covers several
WIN_LENGTH = 200  # 25 ms
HOP_LENGTH = 80  # 10 ms
N_MELS = 40
CLIP_SAMPLES = 8000  # 1 s; FSDD clips are 0.14-2.3 s (median 0.42 s), 99% under 0.92 s
FRAMES = 1 + CLIP_SAMPLES // HOP_LENGTH  # 101 (centred frames)
LOG_FLOOR = 1e-6
HELD_OUT_SPEAKER = "yweweler"  # the last speaker in name order; not chosen by its scores
TEACHER_WIDTH = 256
# kws-tiny's channel-pruning ratio 0.8125 = 1 - 48/256 turns the teacher into exactly this shape.
STUDENT_WIDTH = 48
SPLITS = ("train", "test", "speaker_out")
# Bump when features or training change in a way the hashes below cannot see.
_FEATURE_VERSION = 1
_RECIPE_VERSION = 1
_TEACHER_EPOCHS = 30
_TEACHER_LR = 3e-3
_TEACHER_SEED = 0
_BATCH = 64
_MAX_SHIFT = 10  # frames (100 ms) of random time shift in training
_NAME = re.compile(r"^([0-9])_([A-Za-z0-9-]+)_([0-9]+)\.wav$")


# -- reading and features -------------------------------------------------------------------------


def parse_name(path: str | Path) -> tuple[int, str, int]:
    """``(digit, speaker, index)`` from an FSDD file name ``{digit}_{speaker}_{index}.wav``.

    Raises:
        ValueError: the name does not follow the pattern.

    Example:
        >>> parse_name("recordings/7_jackson_32.wav")
        (7, 'jackson', 32)
    """
    match = _NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{Path(path).name!r} is not an FSDD file name ({{digit}}_{{speaker}}_{{index}}.wav)")
    return int(match.group(1)), match.group(2), int(match.group(3))


def read_wav(path: str | Path) -> torch.Tensor:
    """The samples of a mono 16-bit 8 kHz PCM WAV file as float32 in [-1, 1), shape ``[n]``.

    Raises:
        UnsafeInputError: not a readable WAV file, or not mono / 16-bit / 8 kHz / non-empty.

    Example:
        >>> import io, wave, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "0_x_0.wav")
        >>> with wave.open(path, "wb") as w:
        ...     w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000); w.writeframes(b"\\x00\\x40" * 4)
        >>> read_wav(path).tolist()
        [0.5, 0.5, 0.5, 0.5]
    """
    try:
        with wave.open(str(path), "rb") as w:
            shape = (w.getnchannels(), w.getsampwidth(), w.getframerate())
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as e:
        raise UnsafeInputError(f"cannot read {path} as a WAV file: {e}") from None
    if shape != (1, 2, SAMPLE_RATE) or not raw:
        raise UnsafeInputError(
            f"{path}: expected non-empty mono 16-bit {SAMPLE_RATE} Hz PCM, got channels/bytes per sample/rate {shape}"
        )
    return torch.from_numpy(np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0)


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)  # HTK mel scale


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE, fmin: float = 20.0
) -> torch.Tensor:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]`` (HTK mel scale, peak 1, ``fmin`` to Nyquist).

    Written here because neither librosa nor torchaudio is a dependency (torchaudio pins torch
    releases, librosa pulls in numba); the filters are a dozen lines. Band ``m`` rises linearly from
    centre ``m - 1`` to centre ``m`` and falls to centre ``m + 1``, centres equally spaced in mel.

    Example:
        >>> fb = mel_filterbank()
        >>> tuple(fb.shape), bool((fb.sum(1) > 0).all()), round(float(fb.max()), 2)
        ((40, 257), True, 1.0)
    """
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # [F]
    mels = torch.linspace(
        float(_hz_to_mel(torch.tensor(fmin))), float(_hz_to_mel(torch.tensor(sample_rate / 2))), n_mels + 2
    )
    edges = _mel_to_hz(mels.double())  # [n_mels + 2]
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lo) / (mid - lo)
    falling = (hi - freqs) / (hi - mid)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()  # [n_mels, F]


@functools.lru_cache(maxsize=1)
def _filters() -> tuple[torch.Tensor, torch.Tensor]:
    return mel_filterbank(), torch.hann_window(WIN_LENGTH)


def log_mel(samples: torch.Tensor) -> torch.Tensor:
    """40 log-mel bands ``[N_MELS, FRAMES]`` of one 8 kHz clip ``[n]`` (peak-normalised, centred in 1 s).

    The clip is scaled to peak 1 (recording gain differs between speakers), cropped or zero-padded
    symmetrically to 8000 samples, and framed with a 25 ms Hann window every 10 ms (centred frames);
    each band is ``ln(Σ_f filter[f] · |STFT[f]|² + 1e-6)``.

    Example:
        >>> x = torch.sin(2 * torch.pi * 1000 * torch.arange(4000) / 8000)
        >>> m = log_mel(x)
        >>> tuple(m.shape), int(m[:, 50].argmax())  # band 18 is centred at 1009 Hz
        ((40, 101), 18)
    """
    x = samples.float()
    x = x / x.abs().max().clamp_min(1e-4)
    n = x.shape[0]
    if n >= CLIP_SAMPLES:
        start = (n - CLIP_SAMPLES) // 2
        x = x[start : start + CLIP_SAMPLES]
    else:
        left = (CLIP_SAMPLES - n) // 2
        x = F.pad(x, (left, CLIP_SAMPLES - n - left))
    fb, window = _filters()
    spec = torch.stft(
        x, N_FFT, HOP_LENGTH, WIN_LENGTH, window, center=True, pad_mode="constant", return_complex=True
    )  # [F, FRAMES]
    return torch.log(fb @ spec.abs().square() + LOG_FLOOR)


@dataclass(frozen=True)
class FsddData:
    """Every recording of a folder: features ``[N, N_MELS, FRAMES]``, digit ``[N]``, speaker id ``[N]``, take ``[N]``."""

    features: torch.Tensor
    digit: torch.Tensor
    speaker: torch.Tensor
    index: torch.Tensor
    speakers: tuple[str, ...]


def _recordings(data: str | Path | None) -> list[Path]:
    root = data_path(data, "fsdd/recordings", "fsdd-kws (the Free Spoken Digit Dataset)")
    if not root.is_dir():
        raise UsageError(f"fsdd-kws: --data {root} is not a folder; give the FSDD recordings folder")
    files = sorted(p for p in root.iterdir() if p.suffix == ".wav")
    if not files:
        raise UsageError(f"fsdd-kws: no .wav files in {root}; give the FSDD recordings folder")
    bad = [p.name for p in files if _NAME.match(p.name) is None]
    if bad:
        raise UsageError(
            f"fsdd-kws: {len(bad)} file(s) in {root} are not named {{digit}}_{{speaker}}_{{index}}.wav: {bad[:5]}"
        )
    return files


def _features_key(files: list[Path]) -> str:
    spec = f"v{_FEATURE_VERSION}|{N_FFT}|{WIN_LENGTH}|{HOP_LENGTH}|{N_MELS}|{CLIP_SAMPLES}|" + "|".join(
        f"{p.name}:{p.stat().st_size}" for p in files
    )
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def load_features(data: str | Path | None) -> FsddData:
    """The log-mel features of every recording in ``data``, computed once and cached (keyed on the file list).

    Raises:
        UsageError: ``data`` is None, not a folder, holds no ``.wav`` or a misnamed one.
        UnsafeInputError: a file is not 8 kHz mono 16-bit PCM.
    """
    from safetensors.torch import load_file

    files = _recordings(data)
    path = cache_dir() / "fsdd" / f"features-{_features_key(files)}.safetensors"
    names = [parse_name(p) for p in files]
    speakers = tuple(sorted({s for _, s, _ in names}))
    labels = {
        "digit": torch.tensor([d for d, _, _ in names]),
        "speaker": torch.tensor([speakers.index(s) for _, s, _ in names]),
        "index": torch.tensor([i for _, _, i in names]),
    }
    feats = None
    if path.exists():
        try:
            feats = load_file(path)["features"]
            if feats.shape != (len(files), N_MELS, FRAMES) or not torch.isfinite(feats).all():
                feats = None
        except Exception as e:  # noqa: BLE001 - a corrupt cache is rebuilt, never trusted
            log.warning("cannot read cached FSDD features %s (%s); recomputing", path, e)
            feats = None
    if feats is None:
        feats = torch.stack([log_mel(read_wav(p)) for p in files])  # [N, N_MELS, FRAMES]
        save_atomic({"features": feats}, path)
    return FsddData(feats, labels["digit"], labels["speaker"], labels["index"], speakers)


# -- models ---------------------------------------------------------------------------------------


class DSCNN(nn.Module):
    """Depthwise-separable CNN over time for log-mels ``[B, N_MELS, T]`` (Zhang et al. 2017, "Hello Edge").

    A strided ``(5, 1)`` stem conv (mel bands → ``width`` channels, half the frames), ``blocks`` times a
    depthwise ``(kernel, 1)`` conv + BN + ReLU and a pointwise 1x1 conv + BN + ReLU, global average
    pooling and a linear classifier. Convs are ``Conv2d`` on ``[B, C, T, 1]`` (a 1-D conv over time) so
    BN folding and oneDNN's int8 convolutions apply; plain modules only, so torch.fx and
    Torch-Pruning trace it and remove channels.

    Args:
        width: channels of every layer.
        blocks: depthwise-separable blocks.
        kernel: depthwise kernel length in frames.
        num_classes: classifier outputs.
        dropout: dropout before the classifier (training only).

    Example:
        >>> DSCNN(width=8, blocks=1)(torch.zeros(3, N_MELS, FRAMES)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self, width: int = 256, blocks: int = 4, kernel: int = 5, num_classes: int = 10, dropout: float = 0.1
    ) -> None:
        super().__init__()
        # bias=False: BatchNorm's shift makes a conv bias redundant.
        layers: list[nn.Module] = [
            nn.Conv2d(N_MELS, width, (5, 1), stride=(2, 1), padding=(2, 0), bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        for _ in range(blocks):
            layers += [
                nn.Conv2d(width, width, (kernel, 1), padding=(kernel // 2, 0), groups=width, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.Conv2d(width, width, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for log-mels ``x`` ``[B, N_MELS, T]``."""
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x.unsqueeze(-1))))))


def build_teacher() -> nn.Module:
    """A freshly initialised teacher (``TEACHER_WIDTH`` = 256 channels); ``--model torchslim.workloads.fsdd:build_teacher``.

    Example:
        >>> sum(p.numel() for p in build_teacher().parameters())
        325642
    """
    return DSCNN(width=TEACHER_WIDTH)


def build_student() -> nn.Module:
    """A freshly initialised DS-CNN student: the teacher's architecture at 48 channels (``STUDENT_WIDTH``).

    Example:
        >>> sum(p.numel() for p in build_student().parameters())
        21130
    """
    return DSCNN(width=STUDENT_WIDTH)


def example_inputs() -> tuple[torch.Tensor]:
    """One seeded, standardised-scale log-mel input ``([1, N_MELS, FRAMES],)`` that needs no data set.

    For tracing, MACs and latency through ``--model``; the workload's own ``example_inputs`` is a real
    test utterance.

    Example:
        >>> example_inputs()[0].shape
        torch.Size([1, 40, 101])
    """
    return (torch.randn(1, N_MELS, FRAMES, generator=torch.Generator().manual_seed(0)),)


# -- training data --------------------------------------------------------------------------------


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each clip of ``x`` ``[B, C, T]`` by a random whole number of frames in ±_MAX_SHIFT (edge frames repeat)."""
    b, c, t = x.shape
    shift = torch.randint(-_MAX_SHIFT, _MAX_SHIFT + 1, (b,), generator=generator)
    src = (torch.arange(t)[None] - shift[:, None]).clamp(0, t - 1)  # [B, T]
    return torch.gather(x, 2, src[:, None, :].expand(b, c, t))


def _seeded(build: Callable[[], nn.Module], seed: int = _TEACHER_SEED) -> nn.Module:
    """``build()`` initialised from ``seed`` in a forked RNG (the caller's global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


# -- the workload ---------------------------------------------------------------------------------


class FsddWorkload(Workload):
    """FSDD spoken digits: a DS-CNN teacher trained here (cached), accuracy on two splits in [0, 1].

    Args:
        data: the folder of FSDD recordings (``--data``); required.
        held_out_speaker: the speaker never trained on (the ``speaker_out`` split).

    Raises:
        UsageError: no or an unusable data folder (said how to fix it).

    Example:
        >>> FsddWorkload("/nonexistent")
        Traceback (most recent call last):
        ...
        torchslim.errors.UsageError: fsdd-kws: --data /nonexistent is not a folder; give the FSDD recordings folder
    """

    name = "fsdd-kws"
    metric = "accuracy"
    higher_is_better = True

    @property
    def selection_split(self) -> str:  # type: ignore[override]
        """``"speaker_out"``: FSDD's official split has no validation part, so choices (tune, sensitivity,
        early stopping) are made on the held-out speaker, never trained on and apart from the reported
        ``"test"`` takes; ``"test"`` when that speaker has no recordings here."""
        speakers = {m.group(2) for m in (_NAME.match(p.name) for p in self.files) if m}
        return "speaker_out" if self.held_out_speaker in speakers else "test"

    def __init__(self, data: str | Path | None = None, held_out_speaker: str = HELD_OUT_SPEAKER) -> None:
        self.files = _recordings(data)  # fail fast, before any feature work
        self.data_dir = self.files[0].parent
        self.held_out_speaker = held_out_speaker
        self._splits: dict[str, torch.Tensor] | None = None
        self._teacher_state: dict[str, torch.Tensor] | None = None

    # -- data -------------------------------------------------------------------------------------

    def splits(self) -> dict[str, torch.Tensor]:
        """``{split}_x`` ``[N, N_MELS, FRAMES]`` (standardised per band with train statistics) and ``{split}_y``.

        ``train``: takes 5-49 and ``test``: takes 0-4 of every speaker but the held-out one (FSDD's
        official split); ``speaker_out``: every take of the held-out speaker (may be empty).
        Cached per workload; callers must not modify the tensors in place.
        """
        if self._splits is None:
            d = load_features(self.data_dir)
            held = d.speakers.index(self.held_out_speaker) if self.held_out_speaker in d.speakers else -1
            seen = d.speaker != held
            masks = {"train": seen & (d.index >= 5), "test": seen & (d.index < 5), "speaker_out": ~seen}
            for split in ("train", "test"):
                if not masks[split].any():
                    raise UsageError(
                        f"fsdd-kws: no {split} recordings in {self.data_dir} (train: takes 5-49, test: takes 0-4, "
                        f"speakers other than {self.held_out_speaker!r})"
                    )
            train = d.features[masks["train"]]
            mean = train.mean(dim=(0, 2), keepdim=True)  # [1, N_MELS, 1]
            std = train.std(dim=(0, 2), keepdim=True).clamp_min(1e-3)
            out = {}
            for split, mask in masks.items():
                out[f"{split}_x"] = ((d.features[mask] - mean) / std).contiguous()
                out[f"{split}_y"] = d.digit[mask].contiguous()
            self._splits = out
        return self._splits

    def train_data(self, *, augment: bool = True, seed: int = 0) -> Callable[[], Iterable[tuple]]:
        """A callable giving one shuffled pass of ``(x [64, N_MELS, FRAMES], y [64])`` train batches per call.

        The k-th call shuffles with seed ``seed + k`` (epochs differ, runs repeat); ``augment`` shifts
        each clip by up to 100 ms (seeded like the shuffle).
        """
        s = self.splits()
        calls = iter(range(seed, seed + 2**62))

        def make() -> ShuffledBatches:
            return ShuffledBatches(s["train_x"], s["train_y"], _BATCH, next(calls), _shift if augment else None)

        return make

    def calibration(self, n_batches: int = 8) -> list[tuple[torch.Tensor]]:
        """``n_batches`` batches of 32 train clips in a fixed shuffled order (all digits), each ``(x,)``."""
        x = self.splits()["train_x"]
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        return [(x[order[i * 32 : (i + 1) * 32]].clone(),) for i in range(n_batches) if i * 32 < len(x)]

    def example_inputs(self) -> tuple[torch.Tensor]:
        """One real test utterance ``([1, N_MELS, FRAMES],)``: latency is per utterance, as a spotter runs."""
        return (self.splits()["test_x"][:1].clone(),)

    # -- model ------------------------------------------------------------------------------------

    def factory(self) -> nn.Module:
        """An untrained teacher (the architecture of :meth:`model`)."""
        return build_teacher()

    def cache_path(self) -> Path:
        """Where the trained teacher's weights are cached (keyed on architecture, recipe and data)."""
        spec = (
            f"{_seeded(build_teacher)!r}|v{_RECIPE_VERSION}|e{_TEACHER_EPOCHS}|lr{_TEACHER_LR}|s{_TEACHER_SEED}"
            f"|shift{_MAX_SHIFT}|{_features_key(self.files)}|held:{self.held_out_speaker}"
        )
        return cache_dir() / "fsdd" / f"teacher-{hashlib.sha256(spec.encode()).hexdigest()[:12]}.safetensors"

    def _load_or_train(self) -> dict[str, torch.Tensor]:
        def train() -> nn.Module:
            return fit_(
                _seeded(build_teacher),
                self.train_data(augment=True, seed=_TEACHER_SEED),
                epochs=_TEACHER_EPOCHS,
                lr=_TEACHER_LR,
                seed=_TEACHER_SEED,
                desc="fsdd-kws teacher",
            )

        # One thread: the depthwise convs are small ops where a second thread costs more than it gives.
        return cached_or_trained(self.cache_path(), lambda: _seeded(build_teacher), train, "fsdd teacher", threads=1)

    def model(self) -> nn.Module:
        """The trained teacher in eval mode; a fresh copy each call, so in-place compression is safe.

        Trains on first use and caches the weights.
        """
        if self._teacher_state is None:
            self._teacher_state = self._load_or_train()
        model = _seeded(build_teacher)
        model.load_state_dict(self._teacher_state, strict=True)
        return model.eval()

    # -- quality ----------------------------------------------------------------------------------

    def _accuracy(self, model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor) -> float:
        ref = next((p for p in model.parameters() if p.is_floating_point()), None)
        dtype = ref.dtype if ref is not None else torch.float32
        device = ref.device if ref is not None else torch.device("cpu")
        correct = 0
        for start in range(0, len(y_all), 256):
            pred = model(x_all[start : start + 256].to(device=device, dtype=dtype)).argmax(dim=-1).cpu()
            correct += int((pred == y_all[start : start + 256]).sum())
        return correct / len(y_all)

    def evaluate(self, model: nn.Module, split: str = "test") -> dict[str, float]:
        """Top-1 accuracy of ``model`` on ``split`` (``"train"``, ``"test"`` or ``"speaker_out"``), in [0, 1].

        ``split="test"`` also reports ``accuracy_speaker_out`` (every take of the held-out speaker)
        when that speaker is in the folder, so recipe reports show both. Runs under
        ``torch.inference_mode`` in eval mode and restores the model's previous mode.

        Raises:
            ValueError: an unknown split, or an empty one.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        s = self.splits()
        if len(s[f"{split}_y"]) == 0:
            raise ValueError(f"split {split!r} is empty: speaker {self.held_out_speaker!r} has no recordings here")
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                out = {"accuracy": self._accuracy(model, s[f"{split}_x"], s[f"{split}_y"])}
                if split == "test" and len(s["speaker_out_y"]):
                    out["accuracy_speaker_out"] = self._accuracy(model, s["speaker_out_x"], s["speaker_out_y"])
        finally:
            model.train(was_training)
        return out
