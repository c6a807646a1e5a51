"""espeak-ng through ctypes (the ``espeakng-loader`` wheel): speech with the phonemes it spoke, and its
grapheme-to-phoneme conversion (G2P) alone.

Phonemes come out in espeak-ng's IPA names, one name per phoneme, stress marks included; earful folds them
into one inventory in :mod:`earful.data.phonemes`. Asking for phoneme events does not change the audio
(tested: the built-in corpus is byte-identical with and without them).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

# espeak-ng constants (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_PHONEMES_IPA = 0x02  # espeak_TextToPhonemes: IPA names ...
_PHONEME_SEPARATOR = "_"  # ... with this between the phonemes of a word (bits 8-23)
_MNEMONIC_SEPARATOR = "|"  # between mnemonics: some hold "_" (pauses, "_:")


class _Event(ctypes.Structure):
    """``espeak_EVENT``: the synthesis callback gets an array of them, ended by type 0."""

    class _Id(ctypes.Union):
        _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _Id)]


LOADED_HERE = False  # set once this process has loaded espeak-ng (its state then shapes what it speaks next)


class Espeak:
    """espeak-ng in synchronous mode; one per process (it is a process-global library)."""

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                 ctypes.POINTER(_Event))

    def __init__(self) -> None:
        import espeakng_loader

        global LOADED_HERE
        LOADED_HERE = True
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                               espeakng_loader.get_data_path().encode(), 0)
        if self.rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        self.lib.espeak_ng_SetPhonemeEvents(1, 1)  # phoneme events, IPA names (mnemonics where asked for)
        self._chunks: list[np.ndarray] = []
        self._phonemes: list[bytes] = []

        def collect(wav: Any, n: int, events: Any) -> int:
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            i = 0
            while events[i].type != _EVENT_LIST_TERMINATED:
                if events[i].type == _EVENT_PHONEME:
                    self._phonemes.append(events[i].id.string)  # up to 8 bytes, not always NUL-ended
                i += 1
            return 0

        self._callback = self._CALLBACK(collect)  # keep a reference: espeak holds a raw pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _voice(self, voice: str) -> None:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")

    def synth(self, text: str, voice: str, *, wpm: float, pitch: float, pitch_range: float,
              seed: int = 0, mnemonics: bool = False) -> tuple[np.ndarray, list[str]]:
        """int16 samples at ``self.rate`` (22050 Hz) and the IPA names of the phonemes spoken, in order (with
        espeak's stress marks; pauses are empty names). ``seed`` seeds espeak's noise generator (some variants
        breathe); the output also depends on what this process synthesised before. With ``mnemonics``, the names
        are espeak-ng's own phoneme mnemonics instead, one for each IPA name (pauses named ``_:`` and the like),
        and the audio is the same (checked): where one IPA name stands for several phonemes of a voice, the
        mnemonic says which (:data:`earful.data.phonemes.BY_MNEMONIC`)."""
        self.lib.espeak_ng_SetPhonemeEvents(1, 0 if mnemonics else 1)
        self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        self._voice(voice)
        self.lib.espeak_SetParameter(_RATE, int(round(np.clip(wpm, 80, 450))), 0)
        self.lib.espeak_SetParameter(_PITCH, int(round(np.clip(pitch, 0, 100))), 0)
        self.lib.espeak_SetParameter(_RANGE, int(round(np.clip(pitch_range, 0, 100))), 0)
        self._chunks.clear()
        self._phonemes.clear()
        data = _c_text(text)
        err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak-ng failed on {text!r} (error {err})")
        wave = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return wave, [_ipa_name(p, text) for p in self._phonemes]

    def text_to_phonemes(self, text: str, voice: str, mnemonics: bool = False) -> list[str]:
        """espeak-ng's G2P of ``text`` with ``voice``: IPA phoneme names in order (stress marks kept), what
        ``synth`` would speak (tested on the built-in corpus); with ``mnemonics``, espeak-ng's phoneme mnemonics
        (where the IPA names join a palatal mark to its vowel, ``eʲ``, the mnemonics keep it apart, ``i ;``)."""
        self._voice(voice)
        buf = ctypes.create_string_buffer(_c_text(text))
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        sep = _MNEMONIC_SEPARATOR if mnemonics else _PHONEME_SEPARATOR
        mode = (0 if mnemonics else _PHONEMES_IPA) | (ord(sep) << 8)
        names: list[str] = []
        while ptr.value:  # one clause a call; espeak moves ptr on, to NULL after the last
            clause = self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, mode)
            for word in (clause or b"").decode("utf-8").split():
                names.extend(word.split(sep))
        return names


def _c_text(text: str) -> bytes:
    """``text`` as the NUL-ended UTF-8 espeak-ng reads: ValueError for a NUL inside it (espeak would stop there)."""
    if "\0" in text:
        raise ValueError(f"espeak-ng cannot read a NUL character inside a text (at character {text.index(chr(0))}): "
                         f"{text!r}")
    return text.encode("utf-8")


def _ipa_name(raw: bytes, text: str) -> str:
    try:
        return raw.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        raise RuntimeError(f"espeak-ng gave a phoneme name cut inside a character ({raw!r}) for {text!r}") from None
