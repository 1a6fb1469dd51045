#!/usr/bin/env bash
# Writes the benchmarks' stream as HEVC to $1: the same 60 s of 640x360 25 fps testsrc2 and
# 64 kbit/s AAC as make-600k-flv.sh, with x265 at 536 kbit/s (VBV-capped, 2 s GOP, no scene
# cuts) in Enhanced FLV (FourCC hvc1). Needs ffmpeg 9: $FFMPEG9, or the imageio-ffmpeg venv
# tests/run.sh makes (target/ffmpeg9-venv).
set -euo pipefail
ff=${FFMPEG9:-$(target/ffmpeg9-venv/bin/python -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')}
"$ff" -loglevel error -y -f lavfi -i testsrc2=size=640x360:rate=25 \
  -f lavfi -i sine=frequency=440:sample_rate=44100 -t 60 \
  -c:v libx265 -preset veryfast -b:v 536k -maxrate 536k -bufsize 536k \
  -x265-params "log-level=error:keyint=50:min-keyint=50:scenecut=0" -pix_fmt yuv420p \
  -c:a aac -b:a 64k -f flv "$1"
