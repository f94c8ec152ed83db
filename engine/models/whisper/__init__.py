"""Whisper (HF model_type "whisper"), a folder: model.py (encoder, decoder, caches: the math) and
generate.py (the special-token prompt, suppressed tokens, greedy decoding with a capturable step).
The log-mel front end is engine.audio."""
from engine.models.whisper.model import PRESETS, Config, WhisperForConditionalGeneration, sinusoids  # noqa: F401
