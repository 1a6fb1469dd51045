//! Scans a fragmented MP4 file box header by box header: the init segment (`ftyp` + `moov`),
//! then `moof` + `mdat` pairs. Used by crash recovery (where does the last complete fragment
//! end, how long is what survived) and by VOD playback (the byte range and time of every
//! fragment). Only `moov` and `moof` are read whole; `mdat` payloads are skipped by seeking,
//! so a one-hour file is scanned in milliseconds.
//!
//! Never panics on malformed input (fuzzed as `mp4_scan`): a box that is truncated, has a
//! zero or absurd size, or does not decode ends the usable part of the file there. The few
//! fields it needs (`tkhd`, `mdhd`, `hdlr`; `tfhd`, `tfdt`, `trun`) are read by our own box
//! walker, which allocates nothing per entry: `mp4-atom` 0.17 loops for every declared
//! `sgpd` entry even when entries take no bytes, so a corrupt count exhausts memory (found by
//! this target's fuzzing).

use std::io::{Read, Seek, SeekFrom};

/// Largest `moov`/`moof` read into memory.
const MAX_HEADER_BOX: u64 = 16 * 1024 * 1024;
/// `sample_flags` bit: sample is not a sync sample.
const NON_SYNC: u32 = 0x0001_0000;

/// Why a file has nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// Reading failed.
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    /// No complete `ftyp` + `moov` at the start.
    #[error("no complete init segment (ftyp + moov)")]
    NoInit,
}

/// A track of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    /// MP4 track id.
    pub id: u32,
    /// Ticks per second.
    pub timescale: u32,
    /// `vide` or `soun`.
    pub video: bool,
}

/// One track's run inside a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    /// MP4 track id.
    pub track_id: u32,
    /// `tfdt` base media decode time.
    pub base: u64,
    /// Sum of the sample durations.
    pub duration: u64,
    /// Samples.
    pub samples: u32,
    /// Whether the first sample is a sync sample (an IDR for video).
    pub starts_with_sync: bool,
}

/// One complete `moof` + `mdat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Offset of the `moof`.
    pub offset: u64,
    /// Bytes of `moof` + `mdat`.
    pub len: u64,
    /// Per-track runs.
    pub runs: Vec<RunInfo>,
}

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes of `ftyp` + `moov` (and anything before the first fragment).
    pub init_len: u64,
    /// Tracks from the `moov`.
    pub tracks: Vec<TrackInfo>,
    /// Complete fragments in file order.
    pub fragments: Vec<Fragment>,
    /// Where the usable part of the file ends (after the last complete fragment).
    pub valid_len: u64,
    /// The file's length when scanned.
    pub file_len: u64,
}

impl Scanned {
    /// The track that times segments: the video track, else the first.
    pub fn main_track(&self) -> Option<&TrackInfo> {
        self.tracks
            .iter()
            .find(|t| t.video)
            .or_else(|| self.tracks.first())
    }

    /// Seconds from the first fragment's start to the last one's end, on the main track.
    pub fn duration_secs(&self) -> f64 {
        let Some(main) = self.main_track() else {
            return 0.0;
        };
        let runs = || {
            self.fragments
                .iter()
                .flat_map(|f| f.runs.iter())
                .filter(|r| r.track_id == main.id)
        };
        let (Some(first), Some(end)) = (
            runs().map(|r| r.base).min(),
            runs().map(|r| r.base.saturating_add(r.duration)).max(),
        ) else {
            return 0.0;
        };
        end.saturating_sub(first) as f64 / f64::from(main.timescale.max(1))
    }

    /// Start time (seconds, main track) and duration of fragment `i`.
    pub fn fragment_time(&self, i: usize) -> Option<(f64, f64)> {
        let main = self.main_track()?;
        let run = self
            .fragments
            .get(i)?
            .runs
            .iter()
            .find(|r| r.track_id == main.id)?;
        let ts = f64::from(main.timescale.max(1));
        Some((run.base as f64 / ts, run.duration as f64 / ts))
    }

    /// Whether fragment `i` can start playback (its main-track run begins with a sync sample).
    pub fn fragment_is_independent(&self, i: usize) -> bool {
        let Some(main) = self.main_track() else {
            return false;
        };
        self.fragments
            .get(i)
            .and_then(|f| f.runs.iter().find(|r| r.track_id == main.id))
            .is_some_and(|r| r.starts_with_sync)
    }
}

/// A box header: (kind, header length, total length); `None` when incomplete or invalid.
fn read_header<R: Read + Seek>(
    r: &mut R,
    at: u64,
    file_len: u64,
) -> std::io::Result<Option<([u8; 4], u64, u64)>> {
    if file_len.saturating_sub(at) < 8 {
        return Ok(None);
    }
    r.seek(SeekFrom::Start(at))?;
    let mut h = [0u8; 8];
    r.read_exact(&mut h)?;
    let size32 = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let kind = [h[4], h[5], h[6], h[7]];
    let (header_len, size) = match size32 {
        // 0 = "to the end of the file": a writer that never finished the box.
        0 => return Ok(None),
        1 => {
            if file_len.saturating_sub(at) < 16 {
                return Ok(None);
            }
            let mut l = [0u8; 8];
            r.read_exact(&mut l)?;
            (16, u64::from_be_bytes(l))
        }
        n => (8, u64::from(n)),
    };
    if size < header_len || at.checked_add(size).is_none_or(|end| end > file_len) {
        return Ok(None);
    }
    Ok(Some((kind, header_len, size)))
}

fn read_box<R: Read + Seek>(r: &mut R, at: u64, size: u64) -> std::io::Result<Option<Vec<u8>>> {
    if size > MAX_HEADER_BOX {
        return Ok(None);
    }
    r.seek(SeekFrom::Start(at))?;
    let mut buf = vec![0u8; size as usize];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// The children of a box body: (kind, body); stops at the first malformed header.
fn children(mut buf: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        let size = u32_at(buf, 0)? as u64;
        let kind: [u8; 4] = buf.get(4..8)?.try_into().ok()?;
        let (header, size) = match size {
            1 => (16u64, u64_at(buf, 8)?),
            n => (8, n),
        };
        if size < header || size > buf.len() as u64 {
            return None;
        }
        let body = buf.get(header as usize..size as usize)?;
        buf = buf.get(size as usize..)?;
        Some((kind, body))
    })
}

fn child<'a>(buf: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    children(buf).find(|(k, _)| k == kind).map(|(_, b)| b)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Track id, timescale and kind of every `trak` in a `moov` body.
fn parse_moov(body: &[u8]) -> Option<Vec<TrackInfo>> {
    let mut tracks = Vec::new();
    for (kind, trak) in children(body) {
        if &kind != b"trak" {
            continue;
        }
        let tkhd = child(trak, b"tkhd")?;
        let id = if *tkhd.first()? == 1 {
            u32_at(tkhd, 20)?
        } else {
            u32_at(tkhd, 12)?
        };
        let mdia = child(trak, b"mdia")?;
        let mdhd = child(mdia, b"mdhd")?;
        let timescale = if *mdhd.first()? == 1 {
            u32_at(mdhd, 20)?
        } else {
            u32_at(mdhd, 12)?
        };
        let hdlr = child(mdia, b"hdlr")?;
        let video = hdlr.get(8..12)? == b"vide";
        tracks.push(TrackInfo {
            id,
            timescale,
            video,
        });
    }
    Some(tracks)
}

/// The runs of a `moof` body.
fn parse_moof(body: &[u8]) -> Option<Vec<RunInfo>> {
    let mut runs = Vec::new();
    for (kind, traf) in children(body) {
        if &kind != b"traf" {
            continue;
        }
        let tfhd = child(traf, b"tfhd")?;
        let tf_flags = u32_at(tfhd, 0)? & 0x00ff_ffff;
        let track_id = u32_at(tfhd, 4)?;
        let mut at = 8;
        if tf_flags & 0x01 != 0 {
            at += 8;
        }
        if tf_flags & 0x02 != 0 {
            at += 4;
        }
        let default_duration = if tf_flags & 0x08 != 0 {
            let d = u32_at(tfhd, at)?;
            at += 4;
            Some(d)
        } else {
            None
        };
        if tf_flags & 0x10 != 0 {
            at += 4;
        }
        let default_flags = if tf_flags & 0x20 != 0 {
            Some(u32_at(tfhd, at)?)
        } else {
            None
        };
        let base = match child(traf, b"tfdt") {
            Some(t) if t.first() == Some(&1) => u64_at(t, 4)?,
            Some(t) => u64::from(u32_at(t, 4)?),
            None => 0,
        };
        let mut duration = 0u64;
        let mut samples = 0u32;
        let mut first_flags = None;
        for (kind, trun) in children(traf) {
            if &kind != b"trun" {
                continue;
            }
            let flags = u32_at(trun, 0)? & 0x00ff_ffff;
            let count = u32_at(trun, 4)?;
            let mut at = 8;
            if flags & 0x001 != 0 {
                at += 4;
            }
            let first_sample_flags = if flags & 0x004 != 0 {
                let f = u32_at(trun, at)?;
                at += 4;
                Some(f)
            } else {
                None
            };
            let fields = [0x100u32, 0x200, 0x400, 0x800];
            let per_sample = fields.iter().filter(|f| flags & **f != 0).count() * 4;
            // Every declared sample's fields must be in the box.
            if (count as usize).checked_mul(per_sample)? > trun.len().saturating_sub(at) {
                return None;
            }
            if flags & 0x100 == 0 {
                duration += u64::from(count) * u64::from(default_duration.unwrap_or(0));
            }
            for i in 0..count as usize {
                let mut f = at + i * per_sample;
                if flags & 0x100 != 0 {
                    duration += u64::from(u32_at(trun, f)?);
                    f += 4;
                }
                if flags & 0x200 != 0 {
                    f += 4;
                }
                if i == 0 && first_flags.is_none() {
                    first_flags = Some(if flags & 0x400 != 0 {
                        u32_at(trun, f)
                    } else {
                        first_sample_flags.or(default_flags)
                    });
                }
                if flags & 0x100 == 0 {
                    // Durations come from the default; only the first sample's flags mattered.
                    break;
                }
            }
            samples = samples.saturating_add(count);
        }
        runs.push(RunInfo {
            track_id,
            base,
            duration,
            samples,
            starts_with_sync: first_flags.flatten().is_some_and(|f| f & NON_SYNC == 0),
        });
    }
    Some(runs)
}

/// Scans `r` (whose length is `file_len`).
pub fn scan<R: Read + Seek>(r: &mut R, file_len: u64) -> Result<Scanned, ScanError> {
    let mut at = 0u64;
    let mut tracks = None;
    let mut init_len = 0;
    // ftyp, moov (and anything else) up to the first moof.
    while let Some((kind, header, size)) = read_header(r, at, file_len)? {
        if &kind == b"moof" {
            break;
        }
        if &kind == b"moov" {
            let Some(buf) = read_box(r, at, size)? else {
                break;
            };
            let Some(t) = buf.get(header as usize..).and_then(parse_moov) else {
                break;
            };
            tracks = Some(t);
        }
        at += size;
        init_len = at;
    }
    let tracks = tracks.ok_or(ScanError::NoInit)?;
    let mut fragments = Vec::new();
    let mut valid_len = init_len;
    // moof + mdat pairs.
    while let Some((kind, header, moof_size)) = read_header(r, at, file_len)? {
        if &kind != b"moof" {
            break;
        }
        let Some(buf) = read_box(r, at, moof_size)? else {
            break;
        };
        let Some(runs) = buf.get(header as usize..).and_then(parse_moof) else {
            break;
        };
        let Some((kind, _, mdat_size)) = read_header(r, at + moof_size, file_len)? else {
            break;
        };
        if &kind != b"mdat" {
            break;
        }
        let len = moof_size + mdat_size;
        fragments.push(Fragment {
            offset: at,
            len,
            runs,
        });
        at += len;
        valid_len = at;
    }
    Ok(Scanned {
        init_len,
        tracks,
        fragments,
        valid_len,
        file_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_support;
    use crate::proto::fmp4::{self, Sample, TrackRun};

    fn file(fragments: usize) -> Vec<u8> {
        let tracks = test_support::av_tracks();
        let mut out = fmp4::init_segment(&tracks).unwrap().to_vec();
        for f in 0..fragments {
            let samples: Vec<Sample> = (0..30)
                .map(|i| Sample {
                    data: bytes::Bytes::from(vec![0u8; 100]),
                    duration: 33,
                    keyframe: i == 0,
                    composition_offset: 0,
                })
                .collect();
            let run = TrackRun {
                track_id: 1,
                base_decode_time: (f as u64) * 990,
                samples: &samples,
            };
            out.extend(fmp4::fragment(f as u32 + 1, &[run]).unwrap().to_vec());
        }
        out
    }

    #[test]
    fn complete_file_is_fully_valid() {
        let data = file(3);
        let s = scan(&mut std::io::Cursor::new(&data), data.len() as u64).unwrap();
        assert_eq!(s.fragments.len(), 3);
        assert_eq!(s.valid_len, data.len() as u64);
        assert!((s.duration_secs() - 2.97).abs() < 1e-9);
        assert!(s.fragment_is_independent(2));
        assert_eq!(s.fragment_time(1), Some((0.99, 0.99)));
        assert_eq!(s.tracks.len(), 2);
        assert!(s.tracks[0].video && !s.tracks[1].video);
    }

    #[test]
    fn a_torn_last_fragment_is_cut_off() {
        let data = file(3);
        let whole = scan(&mut std::io::Cursor::new(&data), data.len() as u64).unwrap();
        let third = &whole.fragments[2];
        for cut in [third.offset + 4, third.offset + 40, data.len() as u64 - 1] {
            let part = &data[..cut as usize];
            let s = scan(&mut std::io::Cursor::new(part), cut).unwrap();
            assert_eq!(s.fragments.len(), 2, "cut at {cut}");
            assert_eq!(s.valid_len, third.offset);
            assert!((s.duration_secs() - 1.98).abs() < 1e-9);
        }
    }

    #[test]
    fn reads_a_file_that_ffmpeg_fragmented() {
        // `ffmpeg -f lavfi -i testsrc=size=64x48:rate=10 -t 2 -c:v libx264 -g 10
        //  -movflags frag_keyframe+empty_moov+default_base_moof`: an independent writer.
        let data = include_bytes!("../../fuzz/seeds/mp4_scan/ffmpeg_frag.mp4");
        let s = scan(&mut std::io::Cursor::new(&data[..]), data.len() as u64).unwrap();
        assert_eq!(s.tracks.len(), 1);
        assert!(s.tracks[0].video);
        assert_eq!(s.fragments.len(), 2);
        // ffmpeg ends with an `mfra` index, which is not a fragment (and not needed).
        assert_eq!(&data[s.valid_len as usize + 4..][..4], b"mfra");
        assert!(
            (s.duration_secs() - 2.0).abs() < 0.01,
            "{}",
            s.duration_secs()
        );
        assert!(s.fragment_is_independent(0) && s.fragment_is_independent(1));
    }

    #[test]
    fn no_init_is_an_error_and_garbage_after_it_is_ignored() {
        assert!(matches!(
            scan(&mut std::io::Cursor::new(&[0u8; 3][..]), 3),
            Err(ScanError::NoInit)
        ));
        let mut data = file(1);
        let valid = data.len() as u64;
        data.extend_from_slice(&[0, 0, 0, 0, b'm', b'o', b'o', b'f', 1, 2, 3]);
        let s = scan(&mut std::io::Cursor::new(&data), data.len() as u64).unwrap();
        assert_eq!(s.valid_len, valid);
    }
}
