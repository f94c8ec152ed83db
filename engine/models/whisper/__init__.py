"""Whisper (HF model_type "whisper"), a folder: model.py (encoder, decoder, caches: the math),
generate.py (the special-token prompt, suppressed tokens, language detection, greedy decoding with a
capturable step, timestamps, beam search, 30 s windows) and longform.py (seeking windows with
temperature fallback, as transformers' long-form generate). The log-mel front end is engine.audio."""
from engine.models.whisper.model import PRESETS, Config, WhisperForConditionalGeneration, sinusoids  # noqa: F401
