"""A WHIP publisher nobody here wrote: aiortc (PyPI) sends a generated 640x360 moving
pattern (H.264, which aiortc encodes with libx264 from PyAV) and a 440 Hz tone (Opus) to a
WHIP endpoint, keeps it up for a while, then DELETEs the session.

Usage: python whip_aiortc.py WHIP_URL STREAM_KEY SECONDS
Prints `location=...` once published and `done` at the end; exits non-zero on any failure.
"""

import asyncio
import fractions
import sys
import urllib.request

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

WIDTH, HEIGHT = 640, 360


class Pattern(VideoStreamTrack):
    """Moving luma ramp, 30 fps (aiortc paces it)."""

    def __init__(self):
        super().__init__()
        self.n = 0
        self.ramp = np.tile(np.arange(WIDTH, dtype=np.uint16), (HEIGHT, 1))

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        y = ((self.ramp + self.n * 4) % 256).astype(np.uint8)
        uv = np.full((HEIGHT // 2, WIDTH), 128, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(np.vstack([y, uv]), format="yuv420p")
        frame.pts, frame.time_base = pts, time_base
        self.n += 1
        return frame


class Tone(AudioStreamTrack):
    """440 Hz sine, 20 ms frames at 48 kHz."""

    def __init__(self):
        super().__init__()
        self.sample = 0

    async def recv(self):
        frame = await super().recv()  # paced silence with correct pts
        n = frame.samples
        t = (np.arange(n) + self.sample) / 48000.0
        pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
        self.sample += n
        out = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        out.sample_rate = 48000
        out.pts, out.time_base = frame.pts, fractions.Fraction(1, 48000)
        return out


def http(method, url, key, body=None, content_type=None):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if content_type:
        req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=15) as resp:
        return resp.status, resp.headers, resp.read().decode()


async def main(url, key, seconds):
    pc = RTCPeerConnection()
    pc.addTransceiver(Pattern(), direction="sendonly")
    pc.addTransceiver(Tone(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    loop = asyncio.get_running_loop()
    status, headers, answer = await loop.run_in_executor(
        None, http, "POST", url, key, pc.localDescription.sdp.encode(), "application/sdp"
    )
    assert status == 201, status
    location = urllib.request.urljoin(url, headers["Location"])
    print(f"location={location}", flush=True)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    for _ in range(int(seconds * 10)):
        await asyncio.sleep(0.1)
        if pc.connectionState == "failed":
            raise SystemExit("connection failed")
    print(f"state={pc.connectionState}", flush=True)
    status, _, _ = await loop.run_in_executor(None, http, "DELETE", location, key)
    assert status == 200, status
    await pc.close()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
