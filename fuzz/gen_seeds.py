#!/usr/bin/env python3
"""Regenerates fuzz/seeds/ (run: python3 fuzz/gen_seeds.py). Checked by `cargo test` in fuzz/."""
import struct, os
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
def w(target, name, data):
    d = os.path.join(root, target); os.makedirs(d, exist_ok=True)
    open(os.path.join(d, name), "wb").write(bytes(data))

# ---- AMF0 ----
def num(x): return b"\x00" + struct.pack(">d", x)
def s(x): x = x.encode(); return b"\x02" + struct.pack(">H", len(x)) + x
def key(x): x = x.encode(); return struct.pack(">H", len(x)) + x
def obj(pairs): return b"\x03" + b"".join(key(k) + v for k, v in pairs) + b"\x00\x00\x09"
def ecma(pairs): return b"\x08" + struct.pack(">I", len(pairs)) + b"".join(key(k) + v for k, v in pairs) + b"\x00\x00\x09"
NULL = b"\x05"; UNDEF = b"\x06"
def boolean(b): return b"\x01" + bytes([1 if b else 0])
def strict(items): return b"\x0a" + struct.pack(">I", len(items)) + b"".join(items)
def date(ms, tz): return b"\x0b" + struct.pack(">dh", ms, tz)
def longstr(x): x = x.encode(); return b"\x0c" + struct.pack(">I", len(x)) + x
def typed(cls, pairs): return b"\x10" + key(cls) + b"".join(key(k) + v for k, v in pairs) + b"\x00\x00\x09"

def command(name, txn, o, *args): return s(name) + num(txn) + o + b"".join(args)
connect = command("connect", 1.0, obj([("app", s("live")), ("type", s("nonprivate")),
    ("flashVer", s("FMLE/3.0 (compatible; Lavf61.7.100)")), ("tcUrl", s("rtmp://localhost:1935/live"))]))
metadata_vals = s("@setDataFrame") + s("onMetaData") + ecma([("duration", num(0)), ("width", num(1280)),
    ("height", num(720)), ("framerate", num(30)), ("videocodecid", num(7)), ("audiocodecid", num(10)),
    ("stereo", boolean(True)), ("encoder", s("Lavf61.7.100"))])

w("amf0", "connect", connect)
w("amf0", "metadata", metadata_vals)
w("amf0", "misc", strict([num(1.5), NULL, UNDEF, boolean(False), date(1.7e12, -60)]) + longstr("long") + typed("C", [("k", s("v"))]) + b"\x0d")
w("amf0", "nested", obj([("a", obj([("b", strict([ecma([("c", num(2))])]))]))]))

# ---- AVC / AAC ----
avcc = bytes.fromhex("0142c01fffe100176742c01fda014016ec044000000300400000" "0c23c60ca8" "01000468ce0fc8")
sps = avcc[8:8+23]
assert sps[0] == 0x67 and avcc[8+23] == 1, avcc.hex()
avc_seq_tag = bytes.fromhex("1700000000") + avcc
idr_frame = bytes.fromhex("1701000042") + struct.pack(">I", 5) + bytes.fromhex("6588840021") + struct.pack(">I", 2) + bytes.fromhex("0610")
p_frame = bytes.fromhex("2701000000") + struct.pack(">I", 4) + bytes.fromhex("419a0203")
aac_seq_tag = bytes.fromhex("af00") + bytes.fromhex("1210")
aac_frame = bytes.fromhex("af01211000")
enh_seq = bytes([0x90]) + b"avc1" + avcc          # enhanced, keyframe, SequenceStart
enh_frames = bytes([0x91]) + b"avc1" + b"\x00\x00\x21" + struct.pack(">I", 2) + bytes.fromhex("6588")
enh_modex = bytes([0x97, 0x00, 0xAA, 0x01]) + b"hvc1" + b"\x00\x00\x00" + b"\x00\x00\x00\x01\x26"
enh_audio = bytes([0x90]) + b"mp4a" + bytes.fromhex("1190")

w("flv_avc", "avc_seq_header_tag", avc_seq_tag)
w("flv_avc", "avcc", avcc)
w("flv_avc", "sps", sps)
w("flv_avc", "idr_frame_tag", idr_frame)
w("flv_avc", "avcc_nal_units", idr_frame[5:])
w("flv_avc", "enhanced_seq_start", enh_seq)
w("flv_avc", "enhanced_coded_frames", enh_frames)
w("flv_avc", "enhanced_modex", enh_modex)
w("flv_avc", "aac_seq_header_tag", aac_seq_tag)
w("flv_avc", "enhanced_audio", enh_audio)

w("aac_config", "lc_44100_stereo", bytes.fromhex("1210"))
w("aac_config", "lc_48000_stereo", bytes.fromhex("1190"))
w("aac_config", "he_aac_sbr", bytes.fromhex("2b920800"))
w("aac_config", "he_aac_v2_ps", bytes.fromhex("eb098800"))
w("aac_config", "lc_sync_ext_sbr", bytes.fromhex("131056e598"))
w("aac_config", "pce_ffmpeg_hexagonal", b"\x11\x80\x04\xc8\x08\x00\x20\x08\x84\x0dLavc59.37.100\x56\xe5\x00")
w("aac_config", "object_type_escape", bytes.fromhex("f94640"))

# ---- RTMP chunks ----
class Writer:
    def __init__(self): self.chunk = 128; self.out = bytearray()
    def msg(self, csid, ts, type_id, sid, payload, fmt=0):
        assert csid < 64
        first = True; pos = 0
        while first or pos < len(payload):
            if first:
                if fmt == 0:
                    self.out += bytes([csid]) + ts.to_bytes(3, "big") + len(payload).to_bytes(3, "big") + bytes([type_id]) + struct.pack("<I", sid)
                elif fmt == 1:
                    self.out += bytes([0x40 | csid]) + ts.to_bytes(3, "big") + len(payload).to_bytes(3, "big") + bytes([type_id])
                elif fmt == 2:
                    self.out += bytes([0x80 | csid]) + ts.to_bytes(3, "big")
            else:
                self.out += bytes([0xC0 | csid])
            n = min(self.chunk, len(payload) - pos)
            self.out += payload[pos:pos+n]; pos += n; first = False
        return self

def chunk_seed(stream, splits=(0x40, 0xA0)):
    return bytes([len(splits)]) + bytes(splits) + bytes(stream)

w1 = Writer().msg(3, 0, 20, 0, connect)   # single fmt-0 chunk (payload < 128)
w("rtmp_chunk", "connect_fmt0", chunk_seed(w1.out))
w("rtmp_session", "connect", w1.out)

# publisher flow as ffmpeg sends it
wp = Writer()
wp.msg(2, 0, 1, 0, struct.pack(">I", 4096)); wp.chunk = 4096
wp.msg(3, 0, 20, 0, connect)
wp.msg(3, 0, 20, 0, command("releaseStream", 2.0, NULL, s("key")), fmt=1)
wp.msg(3, 0, 20, 0, command("FCPublish", 3.0, NULL, s("key")), fmt=1)
wp.msg(3, 0, 20, 0, command("createStream", 4.0, NULL), fmt=1)
wp.msg(5, 0, 20, 1, command("publish", 5.0, NULL, s("key?token=x"), s("live")))
wp.msg(5, 0, 18, 1, metadata_vals, fmt=1)
wp.msg(6, 0, 9, 1, avc_seq_tag)
wp.msg(4, 0, 8, 1, aac_seq_tag)
wp.msg(6, 0, 9, 1, idr_frame, fmt=1)
wp.msg(4, 23, 8, 1, aac_frame, fmt=1)
wp.msg(6, 33, 9, 1, p_frame, fmt=1)
wp.msg(6, 33, 9, 1, p_frame, fmt=2)
wp.msg(5, 0, 20, 1, command("FCUnpublish", 6.0, NULL, s("key")), fmt=1)
w("rtmp_session", "publish_flow", wp.out)
w("rtmp_chunk", "publish_flow", chunk_seed(wp.out, (0x10, 0x55, 0x90, 0xF0)))

# play flow + window ack + ping
wq = Writer()
wq.msg(3, 0, 20, 0, connect)
wq.msg(2, 0, 5, 0, struct.pack(">I", 64))           # WindowAckSize (small: forces acks)
wq.msg(3, 0, 20, 0, command("createStream", 2.0, NULL), fmt=1)
wq.msg(8, 0, 20, 1, command("play", 3.0, NULL, s("stream1")))
wq.msg(2, 0, 4, 0, struct.pack(">HI", 6, 1234), fmt=1)  # PingRequest
wq.msg(8, 0, 20, 1, command("deleteStream", 4.0, NULL, num(1)), fmt=1)
w("rtmp_session", "play_flow", wq.out)

# long message over several chunks (default 128), fmt-3 continuation, plus Abort and AMF3 command
wl = Writer()
wl.msg(6, 1000, 9, 1, idr_frame + bytes(300))
wl.msg(2, 0, 2, 0, struct.pack(">I", 7))                       # Abort csid 7
wl.msg(3, 0, 17, 0, b"\x00" + command("getStreamLength", 9.0, NULL, s("x")))  # AMF3 command
wl.msg(2, 0xFFFFFF - 1, 3, 0, struct.pack(">I", 99), fmt=0)     # Acknowledgement
w("rtmp_chunk", "multi_chunk_abort_amf3", chunk_seed(wl.out, (0x08, 0x33, 0x80)))
w("rtmp_session", "multi_chunk", wl.out)

# extended timestamp and 2-byte csid form
ext = bytearray()
ext += bytes([0x00, 10]) + b"\xff\xff\xff" + (5).to_bytes(3, "big") + bytes([8]) + struct.pack("<I", 1) + struct.pack(">I", 0x01000000) + aac_frame
ext += bytes([0x01]) + struct.pack("<H", 300) + b"\x00\x00\x10" + (2).to_bytes(3, "big") + bytes([4]) + struct.pack("<I", 0) + b"\x00\x07"
w("rtmp_chunk", "extended_ts_long_csid", chunk_seed(ext, (0x80,)))

# ---- ingest records: [kind, len(2), body] ----
def rec(kind, body): return bytes([kind]) + struct.pack(">H", len(body)) + body
ing = rec(2, metadata_vals) + rec(0, avc_seq_tag) + rec(1, aac_seq_tag) + rec(0, idr_frame) \
    + rec(1 | (1 << 2), aac_frame) + rec(0 | (1 << 2), p_frame) + rec(3, b"") \
    + rec(0 | (1 << 2), p_frame) + rec(0, enh_seq) + rec(1, bytes.fromhex("af001190")) + rec(3, b"")
w("ingest_rtmp", "av_flow", ing)
vid = rec(0, avc_seq_tag) + b"".join(rec(0 | (1 << 2), idr_frame if i % 10 == 0 else p_frame) for i in range(20)) + rec(0 | (63 << 2), p_frame) + rec(0 | (1 << 2), p_frame)
w("ingest_rtmp", "video_only_wrap", vid)
pend = rec(2, metadata_vals) + rec(0, avc_seq_tag) + b"".join(rec(0 | (20 << 2), idr_frame if i == 0 else p_frame) for i in range(5)) + rec(3, b"")
w("ingest_rtmp", "missing_audio_wait", pend)

# ---- audio_transcode: real AAC frames (from the FLV fixture) and Opus packets (the Ogg fixture) ----
fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
def flv_aac_frames(path, n):
    d = open(path, "rb").read(); pos = 13; out = []
    while pos + 11 <= len(d) and len(out) < n:
        t = d[pos]; size = int.from_bytes(d[pos+1:pos+4], "big"); body = d[pos+11:pos+11+size]
        if t == 8 and len(body) > 2 and body[0] >> 4 == 10 and body[1] == 1: out.append(body[2:])
        pos += 11 + size + 4
    return out
def ogg_packets(path, n):
    d = open(path, "rb").read(); pos = 0; out = []; cur = b""
    while pos + 27 <= len(d) and len(out) < n + 2:
        segs = d[pos+26]; lace = d[pos+27:pos+27+segs]; p = pos + 27 + segs
        for l in lace:
            cur += d[p:p+l]; p += l
            if l < 255: out.append(cur); cur = b""
        pos = p
    return out[2:]  # OpusHead and OpusTags are not audio
def packets(frames, step_ms):
    return b"".join(struct.pack(">Hh", len(f), step_ms) + f for f in frames)
aac = flv_aac_frames(os.path.join(fixtures, "av_baseline.flv"), 24)
opus = ogg_packets(os.path.join(fixtures, "whip_opus.ogg"), 24)
w("audio_transcode", "aac_44k_stereo", bytes([0]) + packets(aac, 23))
w("audio_transcode", "aac_jump", bytes([0]) + packets(aac[:8], 23) + packets(aac[8:9], -2000) + packets(aac[9:], 23))
w("audio_transcode", "opus_stereo", bytes([1]) + packets(opus, 20))
w("audio_transcode", "opus_mono_preskip", bytes([1 | 2 | 8]) + packets(opus, 20))
