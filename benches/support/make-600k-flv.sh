#!/usr/bin/env bash
# Writes the benchmarks' stream to $1: 60 s of 640x360 25 fps H.264 (x264 CBR 536 kbit/s,
# 2 s GOP, no scene cuts) + AAC 64 kbit/s, about 600 kbit/s in all, as FLV.
set -euo pipefail
ffmpeg -loglevel error -y -f lavfi -i testsrc2=size=640x360:rate=25 \
  -f lavfi -i sine=frequency=440:sample_rate=44100 -t 60 \
  -c:v libx264 -preset veryfast -b:v 536k -minrate 536k -maxrate 536k -bufsize 536k \
  -x264-params nal-hrd=cbr -g 50 -keyint_min 50 -sc_threshold 0 -pix_fmt yuv420p \
  -c:a aac -b:a 64k -f flv "$1"
