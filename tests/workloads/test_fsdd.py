"""The fsdd-kws workload: WAV reader, log-mel features, splits, and a tiny end-to-end kws-tiny recipe run.

Reads a handful of the FSDD recordings from ``../shared/data/fsdd/recordings`` (linked into a temporary
folder, never copied); skipped when the data set is not there.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from torchslim.errors import UnsafeInputError, UsageError
from torchslim.workloads import fsdd, get_workload, workload_names

DATA = (Path(__file__).resolve().parents[2] / "../shared/data/fsdd/recordings").resolve()
pytestmark = pytest.mark.skipif(not (DATA / "0_jackson_0.wav").is_file(), reason=f"FSDD not found at {DATA}")


def _write_wav(path: Path, samples: bytes, channels: int = 1, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples)
    return path


def _np_log_mel(samples: np.ndarray) -> np.ndarray:
    """An independent numpy reference of ``fsdd.log_mel`` (explicit framing and real FFT)."""
    x = samples / np.abs(samples).max()
    n = len(x)
    left = (fsdd.CLIP_SAMPLES - n) // 2
    x = np.pad(x, (left, fsdd.CLIP_SAMPLES - n - left))
    x = np.pad(x, (fsdd.N_FFT // 2, fsdd.N_FFT // 2))  # centred frames, zero padding
    win = np.zeros(fsdd.N_FFT)
    start = (fsdd.N_FFT - fsdd.WIN_LENGTH) // 2  # torch.stft centres the shorter window in n_fft
    win[start : start + fsdd.WIN_LENGTH] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(fsdd.WIN_LENGTH) / fsdd.WIN_LENGTH)
    frames = np.stack([x[t * fsdd.HOP_LENGTH : t * fsdd.HOP_LENGTH + fsdd.N_FFT] * win for t in range(fsdd.FRAMES)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [T, F]
    return np.log(fsdd.mel_filterbank().double().numpy() @ power.T + fsdd.LOG_FLOOR)


def test_registered_and_bad_data_folders_are_usage_errors(tmp_path, monkeypatch):
    assert "fsdd-kws" in workload_names()
    monkeypatch.delenv("TORCHSLIM_DATA", raising=False)  # neither --data nor the variable: the error names both
    with pytest.raises(UsageError, match="--data PATH") as missing:
        get_workload("fsdd-kws")
    assert "TORCHSLIM_DATA" in str(missing.value)
    with pytest.raises(UsageError, match="not a folder"):
        get_workload("fsdd-kws", tmp_path / "missing")
    with pytest.raises(UsageError, match="no .wav"):
        get_workload("fsdd-kws", tmp_path)
    _write_wav(tmp_path / "seven.wav", b"\x00\x00" * 8)
    with pytest.raises(UsageError, match="seven.wav"):
        get_workload("fsdd-kws", tmp_path)


def test_reader_reads_real_recordings():
    for name in ("0_jackson_0.wav", "7_theo_32.wav", "9_yweweler_49.wav"):
        x = fsdd.read_wav(DATA / name)
        with wave.open(str(DATA / name)) as w:
            n = w.getnframes()
        assert x.dtype == torch.float32 and x.shape == (n,)
        assert -1.0 <= float(x.min()) and float(x.max()) < 1.0 and float(x.abs().max()) > 0  # some takes peak at 0.02
    assert fsdd.parse_name(DATA / "7_theo_32.wav") == (7, "theo", 32)
    with pytest.raises(ValueError, match="FSDD file name"):
        fsdd.parse_name("theo_7.wav")


def test_reader_rejects_other_formats(tmp_path):
    with pytest.raises(UnsafeInputError, match="mono 16-bit 8000 Hz"):
        fsdd.read_wav(_write_wav(tmp_path / "0_a_0.wav", b"\x00\x00" * 8, channels=2))
    with pytest.raises(UnsafeInputError, match="mono 16-bit 8000 Hz"):
        fsdd.read_wav(_write_wav(tmp_path / "0_a_1.wav", b"\x00\x00" * 8, rate=16000))
    (tmp_path / "0_a_2.wav").write_bytes(b"RIFF nonsense")
    with pytest.raises(UnsafeInputError, match="cannot read"):
        fsdd.read_wav(tmp_path / "0_a_2.wav")


def test_mel_filterbank_is_triangular_on_the_htk_scale():
    fb = fsdd.mel_filterbank()
    assert fb.shape == (40, fsdd.N_FFT // 2 + 1)
    assert float(fsdd._hz_to_mel(torch.tensor(1000.0))) == pytest.approx(1000.0, abs=0.05)
    peaks = fb.argmax(dim=1)
    assert bool((peaks[1:] > peaks[:-1]).all())  # centres strictly increase
    assert bool((fb.sum(dim=1) > 0).all()) and float(fb.max()) <= 1.0 and float(fb.min()) == 0.0


def test_features_shape_finite_and_known_values():
    samples = fsdd.read_wav(DATA / "0_jackson_0.wav")
    m = fsdd.log_mel(samples)
    assert m.shape == (fsdd.N_MELS, fsdd.FRAMES) and bool(torch.isfinite(m).all())
    # A value pinned when the pipeline was written (band 10, frame 50: inside the word).
    assert float(m[10, 50]) == pytest.approx(6.4615, abs=1e-3)
    # Zero padding around the 0.64 s clip sits at the log floor.
    assert float(m[:, 0].max()) == pytest.approx(np.log(fsdd.LOG_FLOOR), abs=1e-6)
    ref = _np_log_mel(samples.double().numpy())
    loud = ref > -5  # away from the floor, where float32 rounding of tiny powers dominates
    assert np.allclose(m.double().numpy()[loud], ref[loud], atol=1e-3)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """Links to 60 recordings: two training speakers (takes 0-1 test, 5-6 train) and the held-out one."""
    root = tmp_path_factory.mktemp("fsdd")
    for digit in range(10):
        for speaker, takes in (("jackson", (0, 5, 6)), ("theo", (1, 7, 8)), ("yweweler", (0, 9, 10))):
            for take in takes:
                name = f"{digit}_{speaker}_{take}.wav"
                (root / name).symlink_to(DATA / name)
    return root


def test_splits_and_feature_cache(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path))
    wl = get_workload("fsdd-kws", tiny_folder)
    s = wl.splits()
    assert [len(s[f"{k}_y"]) for k in fsdd.SPLITS] == [40, 20, 30]
    assert s["train_x"].shape[1:] == (40, 101)
    assert s["train_x"].mean().abs() < 1e-3  # standardised with the train statistics
    cached = list((tmp_path / "fsdd").glob("features-*.safetensors"))
    assert len(cached) == 1
    first = fsdd.load_features(tiny_folder)

    def no_recompute(samples):
        raise AssertionError("features recomputed although cached")

    monkeypatch.setattr(fsdd, "log_mel", no_recompute)
    assert torch.equal(fsdd.load_features(tiny_folder).features, first.features)
    x, y = next(iter(wl.train_data()()))
    assert x.shape == (40, 40, 101) and y.shape == (40,)
    assert wl.example_inputs()[0].shape == (1, 40, 101)
    assert [b[0].shape[0] for b in wl.calibration(3)] == [32, 8]


def test_kws_tiny_recipe_end_to_end(tiny_folder, tmp_path, monkeypatch):
    """The whole recipe on 60 clips: student shapes, int8 modules, both metrics, and a faithful artifact."""
    from torchslim.bench.fsdd import kws_tiny_recipe
    from torchslim.bench.harness import threads
    from torchslim.io import load, save
    from torchslim.quantization import Int8StaticConv2d
    from torchslim.recipes import run_recipe

    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path))
    monkeypatch.setattr(fsdd, "_TEACHER_EPOCHS", 3)  # part of the cache key: never mixes with the real teacher
    wl = get_workload("fsdd-kws", tiny_folder)
    with threads(1):  # small convs: a second thread only adds synchronisation (restored afterwards)
        teacher = wl.model()
        model, run = run_recipe(wl.model(), kws_tiny_recipe(), wl.context(), latency_runs=2)

    student_params = sum(p.numel() for p in fsdd.build_student().parameters())
    assert run.steps[0].report.params == student_params  # step 1 carves out exactly the student
    assert [s.kind for s in run.steps] == ["channel-pruning", "distill", "int8-static"]
    convs = [m for m in model.modules() if isinstance(m, Int8StaticConv2d)]
    assert len(convs) == 9 and all(c.out_channels == fsdd.STUDENT_WIDTH for c in convs)
    quality = run.final.quality
    assert set(quality) == {"accuracy", "accuracy_speaker_out"}
    assert all(0.0 <= v <= 1.0 for v in quality.values())

    save(model, tmp_path / "artifact")
    back = load(tmp_path / "artifact", factory=wl.factory)
    x = wl.splits()["test_x"][:4]
    assert torch.equal(back(x), model(x))
    assert sum(p.stat().st_size for p in (tmp_path / "artifact").iterdir()) < 64 * 1024
    assert wl.evaluate(teacher)["accuracy"] >= 0.0
