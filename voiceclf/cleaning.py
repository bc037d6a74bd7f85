"""The clean-up every waveform gets, whole or block by block: DC removal, a Butterworth high-pass against
rumble, and the peak level.

The high-pass runs scipy.signal.sosfilt's compiled loop without importing scipy.signal (a worker's import of it
costs ~1.2 s of CPU), with the default config's filter coefficients written out.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from voiceclf.config import FeatureConfig

__all__ = ["BlockHighpass", "HIGHPASS_KNOWN", "clean", "highpass_sos", "sosfilt"]


#: butter(4, 50 Hz, "highpass", fs 16 kHz, output="sos") and its sosfilt_zi, as scipy.signal gives them (every
#: digit: ``repr`` round-trips a float exactly; tests/library/test_audio.py checks them against scipy.signal).
HIGHPASS_KNOWN = {
    (16000, 50.0, 4): (
        [[0.9746715011476549, -1.9493430022953098, 0.9746715011476549, 1.0, -1.9639893509038986, 0.9643680015329213],
         [1.0, -2.0, 1.0, 1.0, -1.9847024413583025, 0.985085085402425]],
        [[-0.9746715011476881, 0.9746715011476869], [-0.0, 0.0]],
    ),
}


@functools.lru_cache(maxsize=16)
def highpass_sos(rate: int, cutoff_hz: float, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Butterworth high-pass as second-order sections and their unit-step initial state; cached
    since every file reuses them (computing the state took a third of the clean-up time).

    The default config's are written out: scipy.signal's import costs a worker ~1.2 s of CPU (it imports
    scipy.stats and parses docstrings), as much as a few hundred short files.
    """
    if (rate, cutoff_hz, order) in HIGHPASS_KNOWN:
        sos, zi = HIGHPASS_KNOWN[(rate, cutoff_hz, order)]
        return np.array(sos), np.array(zi)
    import scipy.signal  # here, not at the top: a job's parent never needs it

    sos = scipy.signal.butter(order, cutoff_hz, btype="highpass", fs=rate, output="sos")
    return sos, scipy.signal.sosfilt_zi(sos)


@functools.lru_cache(maxsize=1)
def sosfilt_kernel():
    """scipy.signal.sosfilt's compiled loop (``scipy.signal._sosfilt._sosfilt``), loaded without importing the
    scipy.signal package; None when it cannot be (another scipy layout): :func:`sosfilt` then calls scipy.signal.sosfilt."""
    import sys

    name = "scipy.signal._sosfilt"
    try:
        if name not in sys.modules:
            import importlib.machinery
            import importlib.util

            import scipy

            folder = os.path.join(os.path.dirname(scipy.__file__), "signal")
            path = next(os.path.join(folder, "_sosfilt" + sfx) for sfx in importlib.machinery.EXTENSION_SUFFIXES
                        if os.path.exists(os.path.join(folder, "_sosfilt" + sfx)))
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[name] = module  # scipy.signal, imported later, takes this one instead of loading it again
        return sys.modules[name]._sosfilt
    except Exception:  # StopIteration, ImportError, AttributeError: not the layout of scipy 1.17
        return None


def sosfilt(sos: np.ndarray, x: np.ndarray, zi: np.ndarray, overwrite_x: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.signal.sosfilt(sos, x, zi=zi)`` of a 1-D float64 signal: the same compiled loop, without the package import.

    ``overwrite_x``: a C-contiguous float64 ``x`` the caller no longer needs is filtered in place, not copied first.
    """
    kernel = sosfilt_kernel()
    if kernel is None:
        import scipy.signal

        return scipy.signal.sosfilt(sos, x, zi=zi)
    out = np.array(x, np.float64, order="C", copy=None if overwrite_x else True).reshape(1, -1)  # filtered in place
    state = np.array(zi, np.float64, order="C").reshape(1, len(sos), 2)
    kernel(np.asarray(sos, np.float64), out, state)
    return out[0], state[0]


def clean(y: np.ndarray, cfg: FeatureConfig = FeatureConfig()) -> np.ndarray:
    """Remove DC and rumble, then normalise the peak level.

    Parameters
    ----------
    y : np.ndarray
        Mono waveform, shape (n,), at ``cfg.sample_rate`` Hz, finite values.
    cfg : FeatureConfig
        Uses ``highpass_hz`` (Hz), ``highpass_order``, ``silence_peak_dbfs`` (dBFS) and
        ``target_peak`` (linear amplitude).

    Returns
    -------
    np.ndarray
        float32, shape (n,). The peak is ``cfg.target_peak``, except when the cleaned peak
        is below ``cfg.silence_peak_dbfs``: then the level is left as is, because
        amplifying a silent recording would turn its noise floor into "speech" for voice
        activity detection.
    """
    x = np.array(y, dtype=np.float64)  # this function's own copy; filter in float64: the poles sit close to 1
    if x.ndim != 1:
        raise ValueError(f"clean: expected a 1-D mono waveform, got shape {x.shape}")
    if x.size == 0:
        return x.astype(np.float32)
    # Subtracting the mean first spares the causal filter a large start-up step on DC.
    x -= x.mean()
    sos, zi = highpass_sos(cfg.sample_rate, float(cfg.highpass_hz), cfg.highpass_order)
    # Start the filter in the steady state for the first sample, as if the signal had always
    # been there: a zero initial state would add a start-up step that leaves a DC residue.
    x, _ = sosfilt(sos, x, zi=zi * x[0], overwrite_x=True)
    peak = float(max(x.max(), -x.min()))  # max |x| without an array of |x|
    if peak > 0 and 20.0 * np.log10(peak) >= cfg.silence_peak_dbfs:
        x *= cfg.target_peak / peak
    return x.astype(np.float32)


class BlockHighpass:
    """:func:`clean`'s DC removal and high-pass applied block by block, the filter state carried between blocks.

    The whole-file mean :func:`clean` subtracts is unknown until the end: the first block's mean is subtracted
    instead, and what remains is a constant the high-pass removes (its initial state is the steady state of the
    first sample, DC included). No peak normalisation: the peak is a property of the whole recording.
    """

    def __init__(self, cfg: FeatureConfig = FeatureConfig()) -> None:
        self.sos, self.zi = highpass_sos(cfg.sample_rate, float(cfg.highpass_hz), cfg.highpass_order)
        self.state, self.dc = None, 0.0

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """The next stretch of the filtered waveform (float64) from the next non-empty mono block."""
        x = np.asarray(block, dtype=np.float64)
        if self.state is None:
            self.dc = x.mean()
            self.state = self.zi * (x[0] - self.dc)
        x, self.state = sosfilt(self.sos, x - self.dc, zi=self.state)
        return x
