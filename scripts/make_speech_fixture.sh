#!/bin/sh
# Regenerates tests/fixtures/speech_16k.wav: real speech from espeak-ng (Debian package espeak-ng
# 1.51, `apt-get install espeak-ng`), written at its native 22050 Hz and resampled to 16 kHz mono
# 16-bit with engine.audio.resample (scipy.signal.resample_poly's Kaiser filter, in numpy).
set -e
cd "$(dirname "$0")/.."
tmp=$(mktemp --suffix=.wav)
espeak-ng -v en-us -s 160 -w "$tmp" "The quick brown fox jumps over the lazy dog."
python -c "
import sys
from engine.audio import read_wav, resample, write_wav
x, sr = read_wav(sys.argv[1])
write_wav('tests/fixtures/speech_16k.wav', resample(x, sr, 16000), 16000)
" "$tmp"
rm -f "$tmp"
