"""The vocal-tract measures of the hard-voice view and the accuracy experiments (bench/voicefeat.py),
against a reference: vowels synthesised with known formants and pitch."""
import numpy as np
import pytest
from scipy.signal import lfilter

from bench import hard, voicefeat

SR = 16000


def vowel(f0: float, formants: list[float], seconds: float = 1.0, bw: float = 80.0) -> np.ndarray:
    """A glottal pulse train at ``f0`` through an all-pole filter with a resonance (bandwidth ``bw`` Hz) at each formant:
    the source-filter model LPC inverts, so its formants are known exactly."""
    n = int(seconds * SR)
    src = np.zeros(n)
    src[:: int(round(SR / f0))] = 1.0
    a = np.array([1.0])
    for f in formants:
        r = np.exp(-np.pi * bw / SR)
        a = np.convolve(a, [1.0, -2 * r * np.cos(2 * np.pi * f / SR), r * r])
    y = lfilter([1.0], a, src)
    y = lfilter([1.0], [1.0, -0.9], y)  # the glottal and lip spectral tilt voicefeat's pre-emphasis undoes
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


@pytest.mark.parametrize("f0,formants", [(110.0, [700, 1220, 2600, 3500]), (210.0, [850, 2050, 2850, 3900]), (160.0, [500, 1500, 2500, 3500])])
def test_formants_and_f0_of_synthetic_vowels(f0, formants):
    m = voicefeat.measure(vowel(f0, formants))
    assert m["f0_med"] == pytest.approx(f0, rel=0.03)
    for k, f in enumerate(formants, start=1):
        # a harmonic near a formant pulls LPC's estimate; the tolerance is half a harmonic spacing of a low voice
        assert m[f"F{k}"] == pytest.approx(f, abs=max(0.04 * f, 40)), (k, m)
    assert m["duration_s"] == pytest.approx(1.0) and m["voiced_share"] > 0.8


def test_the_hard_view_splits_by_band_length_and_sex():
    import pandas as pd

    files = pd.DataFrame({"file": list("abcdef"), "speaker": ["w_low", "w_low", "w_high", "m_high", "m_low", "m_low"],
                          "corpus": "c", "y": [0, 0, 0, 1, 1, 1], "p": [0.8, 0.3, 0.1, 0.4, 0.9, 0.95]})
    files["correct"] = (files["p"] >= 0.5).astype(int) == files["y"]
    measures = pd.DataFrame({"file": list("abcdef"), "speaker": files["speaker"], "duration_s": [1.0, 3.0, 2.0, 1.2, 4.0, 4.0],
                             "f0_med": [160.0, 170.0, 220.0, 150.0, 110.0, 100.0]})
    f = hard.annotate(files, measures)
    assert f["overlap"].tolist() == [True, True, False, True, False, False]
    assert f["short"].tolist() == [True, False, False, True, False, False]
    v = hard.view(f)
    assert v["women"] == pytest.approx((0.5 + 1.0) / 2) and v["men"] == pytest.approx((0.0 + 1.0) / 2)
    assert v["overlap"] == pytest.approx((0.5 + 0.0) / 2) and v["overlap_speakers"] == 2
    assert v["short"] == pytest.approx((0.0 + 0.0) / 2)
