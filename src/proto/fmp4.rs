//! Fragmented MP4 (CMAF) muxing on `mp4-atom` boxes: an init segment from a stream's tracks,
//! and `moof`+`mdat` fragments from samples. Sans-IO: values in, bytes out.
//!
//! Used by the HLS segmenter (a fragment per part) and, later, the recorder. Sample payloads
//! are never copied: a fragment is returned as [`Chunks`], the encoded boxes followed by the
//! samples' own `Bytes`, which HTTP writes out one after the other.
//!
//! The quirks of `mp4-atom` 0.17 recorded in DESIGN.md are handled here: the `moof` is encoded
//! twice to fill in `trun.data_offset`, `mdat` is written as a bare header, flags are set on
//! every sample, composition offsets are signed (trun version 1), and the unsafe defaults of
//! `Mvhd`, `Tkhd`, `Visual` and `Avcc` are overridden.

use bytes::Bytes;
use mp4_atom::{
    Atom, Audio, Avc1, Avcc, AvccExt, Dinf, Dops, Dref, Encode, Esds, Ftyp, Hdlr, Header, Mdat,
    Mdhd, Mdia, Mfhd, Minf, Moof, Moov, Mp4a, Mvex, Mvhd, Opus, Smhd, Stbl, Stco, Stsc, Stsd, Stsz,
    Stts, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex, Trun, TrunEntry, TrunSamples, Url, Visual, Vmhd,
};

use crate::media::aac::AacConfig;
use crate::media::h264::AvcConfig;
use crate::media::opus::OpusConfig;
use crate::media::{CodecConfig, Track, Tracks};

/// `sample_flags` of a sync sample (depends on no other sample).
pub const SYNC_SAMPLE_FLAGS: u32 = 0x0200_0000;
/// `sample_flags` of a non-sync sample (depends on others, is not a sync sample).
pub const NON_SYNC_SAMPLE_FLAGS: u32 = 0x0101_0000;

/// A muxing failure (a value `mp4-atom` refused to encode).
#[derive(Debug, thiserror::Error)]
pub enum Fmp4Error {
    /// `mp4-atom` rejected a box.
    #[error("mp4 encoding failed: {0}")]
    Encode(#[from] mp4_atom::Error),
    /// A fragment or init segment was asked for with nothing in it.
    #[error("nothing to mux: {0}")]
    Empty(&'static str),
    /// A sample is larger than a `trun` entry can describe.
    #[error("sample of {0} bytes is too large")]
    SampleTooLarge(usize),
    /// The codec has no fMP4 mapping here (camera JPEG).
    #[error("codec {0} is not carried in fMP4")]
    Unsupported(&'static str),
}

/// Bytes made of several shared pieces, written out in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunks {
    /// The pieces.
    pub parts: Vec<Bytes>,
    /// Their total length.
    pub len: usize,
}

impl Chunks {
    /// Appends a piece.
    pub fn push(&mut self, b: Bytes) {
        self.len += b.len();
        self.parts.push(b);
    }

    /// Appends every piece of `other`.
    pub fn extend(&mut self, other: &Chunks) {
        for b in &other.parts {
            self.push(b.clone());
        }
    }

    /// The same bytes as one contiguous buffer (one copy; none for a single piece).
    pub fn joined(&self) -> Bytes {
        if let [only] = self.parts.as_slice() {
            return only.clone();
        }
        let mut out = bytes::BytesMut::with_capacity(self.len);
        for b in &self.parts {
            out.extend_from_slice(b);
        }
        out.freeze()
    }

    /// Copies everything into one buffer (tests and small consumers).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for b in &self.parts {
            v.extend_from_slice(b);
        }
        v
    }
}

/// One sample of a fragment.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Duration in the track's timescale.
    pub duration: u32,
    /// `pts - dts` in the track's timescale.
    pub composition_offset: i32,
    /// A sync sample.
    pub keyframe: bool,
    /// The payload.
    pub data: Bytes,
}

/// The samples of one track in a fragment.
#[derive(Debug, Clone)]
pub struct TrackRun<'a> {
    /// The MP4 track id (1-based).
    pub track_id: u32,
    /// Decode time of the first sample, in the track's timescale.
    pub base_decode_time: u64,
    /// The samples, in decode order.
    pub samples: &'a [Sample],
}

/// The MP4 track id of a hub track (MP4 ids start at 1).
pub fn mp4_track_id(track: &Track) -> u32 {
    u32::from(track.id.0) + 1
}

/// The CMAF init segment (`ftyp` + `moov`) for these tracks.
pub fn init_segment(tracks: &Tracks) -> Result<Bytes, Fmp4Error> {
    if tracks.list.is_empty() {
        return Err(Fmp4Error::Empty("no tracks"));
    }
    let ftyp = Ftyp {
        major_brand: b"iso6".into(),
        minor_version: 0,
        compatible_brands: vec![
            b"iso6".into(),
            b"cmfc".into(),
            b"isom".into(),
            b"mp41".into(),
        ],
    };
    let next_track_id = tracks.list.iter().map(mp4_track_id).max().unwrap_or(0) + 1;
    let moov = Moov {
        mvhd: Mvhd {
            timescale: 1000,
            rate: 1.into(),
            volume: 1.into(),
            next_track_id,
            ..Default::default()
        },
        mvex: Some(Mvex {
            mehd: None,
            trex: tracks
                .list
                .iter()
                .map(|t| Trex {
                    track_id: mp4_track_id(t),
                    default_sample_description_index: 1,
                    ..Default::default()
                })
                .collect(),
        }),
        trak: tracks.list.iter().map(trak).collect::<Result<_, _>>()?,
        ..Default::default()
    };
    let mut buf = Vec::new();
    ftyp.encode(&mut buf)?;
    moov.encode(&mut buf)?;
    Ok(Bytes::from(buf))
}

fn trak(track: &Track) -> Result<Trak, Fmp4Error> {
    let (tkhd, handler, minf_header, codec) = match &track.codec {
        CodecConfig::H264(avc) => {
            let (w, h) = (avc.info.width, avc.info.height);
            let tkhd = Tkhd {
                width: (w.min(u32::from(u16::MAX)) as u16).into(),
                height: (h.min(u32::from(u16::MAX)) as u16).into(),
                ..Default::default()
            };
            (tkhd, b"vide", MinfHeader::Video, avc1(avc)?.into())
        }
        CodecConfig::Hevc(_) | CodecConfig::Av1(_) | CodecConfig::Vp9(_) => {
            let info = track.codec.video_info().unwrap_or(crate::media::VideoInfo {
                width: 0,
                height: 0,
                fps: None,
                profile: "",
            });
            let tkhd = Tkhd {
                width: (info.width.min(u32::from(u16::MAX)) as u16).into(),
                height: (info.height.min(u32::from(u16::MAX)) as u16).into(),
                ..Default::default()
            };
            (tkhd, b"vide", MinfHeader::Video, video_entry(&track.codec)?)
        }
        CodecConfig::Aac(aac) => {
            let tkhd = Tkhd {
                volume: 1.into(),
                alternate_group: 1,
                ..Default::default()
            };
            (tkhd, b"soun", MinfHeader::Sound, mp4a(aac).into())
        }
        CodecConfig::Opus(opus) => {
            let tkhd = Tkhd {
                volume: 1.into(),
                alternate_group: 1,
                ..Default::default()
            };
            (tkhd, b"soun", MinfHeader::Sound, opus_entry(opus).into())
        }
        CodecConfig::Jpeg { .. } => return Err(Fmp4Error::Unsupported("jpeg")),
    };
    let mut minf = Minf {
        dinf: Dinf {
            dref: Dref {
                entries: vec![Url {
                    location: String::new(),
                }
                .into()],
            },
        },
        stbl: Stbl {
            stsd: Stsd {
                codecs: vec![codec],
            },
            stts: Stts::default(),
            stsc: Stsc::default(),
            stsz: Stsz::default(),
            stco: Some(Stco::default()),
            ..Default::default()
        },
        ..Default::default()
    };
    match minf_header {
        MinfHeader::Video => minf.vmhd = Some(Vmhd::default()),
        MinfHeader::Sound => minf.smhd = Some(Smhd::default()),
    }
    Ok(Trak {
        tkhd: Tkhd {
            track_id: mp4_track_id(track),
            enabled: true,
            in_movie: true,
            ..tkhd
        },
        mdia: Mdia {
            mdhd: Mdhd {
                timescale: track.timescale,
                language: "und".into(),
                ..Default::default()
            },
            hdlr: Hdlr {
                handler: handler.into(),
                name: "media-server".into(),
            },
            minf,
        },
        ..Default::default()
    })
}

enum MinfHeader {
    Video,
    Sound,
}

fn avc1(avc: &AvcConfig) -> Result<Avc1, Fmp4Error> {
    let info = &avc.info;
    // High profiles carry chroma format and bit depths in the avcC extension.
    let high = matches!(avc.profile, 100 | 110 | 122 | 144);
    Ok(Avc1 {
        visual: Visual {
            data_reference_index: 1,
            width: info.width.min(u32::from(u16::MAX)) as u16,
            height: info.height.min(u32::from(u16::MAX)) as u16,
            horizresolution: 72.into(),
            vertresolution: 72.into(),
            frame_count: 1,
            compressor: "".into(),
            depth: 24,
        },
        avcc: Avcc {
            configuration_version: 1,
            avc_profile_indication: avc.profile,
            profile_compatibility: avc.compatibility,
            avc_level_indication: avc.level,
            length_size: avc.nal_length_size,
            sequence_parameter_sets: avc.sps.iter().map(|s| s.to_vec()).collect(),
            picture_parameter_sets: avc.pps.iter().map(|p| p.to_vec()).collect(),
            ext: high.then(|| AvccExt {
                chroma_format: info.chroma_format_idc,
                bit_depth_luma: info.bit_depth_luma,
                bit_depth_chroma: info.bit_depth_chroma,
                sequence_parameter_sets_ext: Vec::new(),
            }),
        },
        btrt: None,
        colr: None,
        pasp: None,
        taic: None,
        fiel: None,
        spatial: None,
    })
}

/// A visual sample entry's fields for a `width` × `height` picture.
fn visual(width: u32, height: u32) -> Visual {
    Visual {
        data_reference_index: 1,
        width: width.min(u32::from(u16::MAX)) as u16,
        height: height.min(u32::from(u16::MAX)) as u16,
        horizresolution: 72.into(),
        vertresolution: 72.into(),
        frame_count: 1,
        compressor: "".into(),
        depth: 24,
    }
}

/// The `hvc1`, `av01` or `vp09` sample entry: the configuration record as the publisher sent
/// it, decoded into `mp4-atom`'s box (which writes it back unchanged).
fn video_entry(codec: &CodecConfig) -> Result<mp4_atom::Codec, Fmp4Error> {
    let size = codec.video_info().map_or((0, 0), |i| (i.width, i.height));
    let visual = visual(size.0, size.1);
    Ok(match codec {
        CodecConfig::Hevc(c) => mp4_atom::Hvc1 {
            visual,
            hvcc: mp4_atom::Hvcc::decode_body(&mut &c.raw[..])?,
            lhvc: None,
            btrt: None,
            colr: None,
            pasp: None,
            taic: None,
            fiel: None,
            ccst: None,
            spatial: None,
        }
        .into(),
        CodecConfig::Av1(c) => mp4_atom::Av01 {
            visual,
            av1c: mp4_atom::Av1c::decode_body(&mut &c.raw[..])?,
            btrt: None,
            ccst: None,
            colr: None,
            pasp: None,
            taic: None,
            spatial: None,
        }
        .into(),
        CodecConfig::Vp9(c) => mp4_atom::Vp09 {
            visual,
            vpcc: mp4_atom::VpcC::decode_body(&mut &c.raw[..])?,
            btrt: None,
            colr: None,
            pasp: None,
            spatial: None,
        }
        .into(),
        _ => return Err(Fmp4Error::Unsupported("not an HEVC, AV1 or VP9 track")),
    })
}

/// `Opus` sample entry with its `dOps` box ("Encapsulation of Opus in ISO Base Media File
/// Format" §4.3): 48 kHz in the sample entry, channel mapping family 0.
fn opus_entry(opus: &OpusConfig) -> Opus {
    Opus {
        audio: Audio {
            data_reference_index: 1,
            channel_count: u16::from(opus.channels.max(1)),
            sample_size: 16,
            sample_rate: 48_000u16.into(),
        },
        dops: Dops {
            output_channel_count: opus.channels.max(1),
            pre_skip: opus.pre_skip,
            input_sample_rate: opus.input_sample_rate,
            output_gain: 0,
            channel_mapping: None,
        },
        btrt: None,
    }
}

fn mp4a(aac: &AacConfig) -> Mp4a {
    let freq_index = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ]
    .iter()
    .position(|&r| r == aac.sample_rate)
    .map_or(15, |i| i as u8);
    Mp4a {
        audio: Audio {
            data_reference_index: 1,
            channel_count: u16::from(aac.channels.max(1)),
            sample_size: 16,
            sample_rate: (aac.sample_rate.min(u32::from(u16::MAX)) as u16).into(),
        },
        esds: Esds {
            es_desc: mp4_atom::esds::EsDescriptor {
                es_id: 0,
                dec_config: mp4_atom::esds::DecoderConfig {
                    object_type_indication: 0x40,
                    stream_type: 5,
                    dec_specific: Some(mp4_atom::esds::DecoderSpecific {
                        profile: aac.object_type,
                        freq_index,
                        chan_conf: aac.channels,
                        raw: aac.raw.to_vec(),
                    }),
                    ..Default::default()
                },
                ..Default::default()
            },
        },
        btrt: None,
        taic: None,
    }
}

/// One `moof` + `mdat` holding `runs` (one `traf` per track, payloads in the same order).
pub fn fragment(sequence_number: u32, runs: &[TrackRun<'_>]) -> Result<Chunks, Fmp4Error> {
    let runs: Vec<&TrackRun<'_>> = runs.iter().filter(|r| !r.samples.is_empty()).collect();
    if runs.is_empty() {
        return Err(Fmp4Error::Empty("no samples"));
    }
    let mut moof = Moof {
        mfhd: Mfhd { sequence_number },
        traf: runs.iter().map(|r| traf(r)).collect::<Result<_, _>>()?,
    };
    // Encode once to learn the moof size, then point each trun at its bytes in the mdat.
    let moof_len = encoded_len(&moof)?;
    let mut offset = moof_len + 8;
    for (traf, run) in moof.traf.iter_mut().zip(&runs) {
        for trun in &mut traf.trun {
            trun.data_offset =
                Some(i32::try_from(offset).map_err(|_| Fmp4Error::SampleTooLarge(offset))?);
        }
        offset += run.samples.iter().map(|s| s.data.len()).sum::<usize>();
    }
    let mdat_payload = offset - moof_len - 8;
    let mut head = Vec::with_capacity(moof_len + 8);
    moof.encode(&mut head)?;
    Header {
        kind: Mdat::KIND,
        size: Some(mdat_payload),
    }
    .encode(&mut head)?;
    let mut out = Chunks::default();
    out.push(Bytes::from(head));
    for run in &runs {
        for s in run.samples {
            out.push(s.data.clone());
        }
    }
    Ok(out)
}

fn encoded_len(moof: &Moof) -> Result<usize, Fmp4Error> {
    let mut probe = moof.clone();
    for traf in &mut probe.traf {
        for trun in &mut traf.trun {
            trun.data_offset = Some(0);
        }
    }
    let mut buf = Vec::new();
    probe.encode(&mut buf)?;
    Ok(buf.len())
}

fn traf(run: &TrackRun<'_>) -> Result<Traf, Fmp4Error> {
    let entries = run
        .samples
        .iter()
        .map(|s| {
            let size =
                u32::try_from(s.data.len()).map_err(|_| Fmp4Error::SampleTooLarge(s.data.len()))?;
            Ok(TrunEntry {
                duration: Some(s.duration),
                size: Some(size),
                flags: Some(if s.keyframe {
                    SYNC_SAMPLE_FLAGS
                } else {
                    NON_SYNC_SAMPLE_FLAGS
                }),
                cts: Some(i64::from(s.composition_offset)),
            })
        })
        .collect::<Result<Vec<_>, Fmp4Error>>()?;
    Ok(Traf {
        tfhd: Tfhd {
            track_id: run.track_id,
            default_base_is_moof: true,
            ..Default::default()
        },
        tfdt: Some(Tfdt {
            base_media_decode_time: run.base_decode_time,
        }),
        trun: vec![Trun {
            data_offset: Some(0),
            samples: TrunSamples::Explicit(entries),
        }],
        sbgp: vec![],
        sgpd: vec![],
        subs: vec![],
        saiz: vec![],
        saio: vec![],
        meta: None,
        senc: None,
        udta: None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn hevc_av1_vp9_and_opus_init_segments_carry_the_records_unchanged() {
        use mp4_atom::{Codec, Decode};
        let tracks = crate::media::test_support::enhanced_tracks();
        let init = super::init_segment(&tracks).unwrap();
        let mut buf = &init[..];
        let _ftyp = mp4_atom::Ftyp::decode(&mut buf).unwrap();
        let moov = mp4_atom::Moov::decode(&mut buf).unwrap();
        assert_eq!(moov.trak.len(), 4);
        let entry = |i: usize| moov.trak[i].mdia.minf.stbl.stsd.codecs[0].clone();
        match entry(0) {
            Codec::Hvc1(h) => {
                assert_eq!((h.visual.width, h.visual.height), (1920, 1080));
                let mut raw = Vec::new();
                mp4_atom::Encode::encode(&h.hvcc, &mut raw).unwrap();
                assert!(
                    raw.ends_with(crate::media::test_support::HVCC_1080P_MAIN),
                    "hvcC written back as received"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(entry(1), Codec::Opus(o) if o.dops.pre_skip == 312));
        match entry(2) {
            Codec::Av01(a) => {
                assert_eq!((a.visual.width, a.visual.height), (640, 360));
                assert_eq!(a.av1c.seq_level_idx_0, 1);
            }
            other => panic!("{other:?}"),
        }
        match entry(3) {
            Codec::Vp09(v) => {
                assert_eq!((v.visual.width, v.visual.height), (640, 360));
                assert_eq!(v.vpcc.level, 21);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn joined_chunks_are_the_same_bytes_in_one_buffer() {
        let mut c = Chunks::default();
        for piece in [&b"moof"[..], b"mdat", b"sample-1", b""] {
            c.push(Bytes::copy_from_slice(piece));
        }
        assert_eq!(&c.joined()[..], &c.to_vec()[..]);
        let mut one = Chunks::default();
        one.push(Bytes::from_static(b"whole"));
        assert_eq!(
            one.joined().as_ptr(),
            one.parts[0].as_ptr(),
            "a single piece is not copied"
        );
    }

    use super::*;
    use crate::media::test_support::av_tracks;
    use mp4_atom::Decode;

    #[test]
    fn init_segment_round_trips_through_mp4_atom() {
        let init = init_segment(&av_tracks()).unwrap();
        let mut buf = std::io::Cursor::new(init.as_ref());
        let ftyp = Ftyp::decode(&mut buf).unwrap();
        assert_eq!(ftyp.major_brand, b"iso6".into());
        let moov = Moov::decode(&mut buf).unwrap();
        assert_eq!(moov.trak.len(), 2);
        assert_eq!(moov.mvhd.rate, 1.into());
        let video = &moov.trak[0];
        assert!(video.tkhd.enabled);
        assert_eq!(video.tkhd.track_id, 1);
        assert_eq!(video.mdia.mdhd.timescale, 1000);
        match &video.mdia.minf.stbl.stsd.codecs[0] {
            mp4_atom::Codec::Avc1(avc1) => {
                assert_eq!(avc1.visual.width, 1280);
                assert_eq!(avc1.visual.height, 720);
                assert_eq!(avc1.visual.data_reference_index, 1);
                assert_eq!(avc1.avcc.avc_profile_indication, 66);
            }
            other => panic!("expected avc1, got {other:?}"),
        }
        match &moov.trak[1].mdia.minf.stbl.stsd.codecs[0] {
            mp4_atom::Codec::Mp4a(mp4a) => {
                let ds = mp4a.esds.es_desc.dec_config.dec_specific.as_ref().unwrap();
                assert_eq!(ds.raw, vec![0x12, 0x10]);
                assert_eq!(mp4a.audio.channel_count, 2);
            }
            other => panic!("expected mp4a, got {other:?}"),
        }
        assert_eq!(moov.mvex.unwrap().trex.len(), 2);
    }

    #[test]
    fn fragment_offsets_point_at_each_tracks_samples() {
        let v = vec![
            Sample {
                duration: 33,
                composition_offset: 66,
                keyframe: true,
                data: Bytes::from_static(b"VVVV"),
            },
            Sample {
                duration: 33,
                composition_offset: -33,
                keyframe: false,
                data: Bytes::from_static(b"vv"),
            },
        ];
        let a = vec![Sample {
            duration: 23,
            composition_offset: 0,
            keyframe: true,
            data: Bytes::from_static(b"AAA"),
        }];
        let chunks = fragment(
            7,
            &[
                TrackRun {
                    track_id: 1,
                    base_decode_time: 1000,
                    samples: &v,
                },
                TrackRun {
                    track_id: 2,
                    base_decode_time: 990,
                    samples: &a,
                },
            ],
        )
        .unwrap();
        let bytes = chunks.to_vec();
        assert_eq!(bytes.len(), chunks.len);
        let mut buf = std::io::Cursor::new(bytes.as_slice());
        let moof = Moof::decode(&mut buf).unwrap();
        let moof_len = buf.position() as usize;
        assert_eq!(moof.mfhd.sequence_number, 7);
        assert_eq!(&bytes[moof_len + 4..moof_len + 8], b"mdat");
        let off_v = moof.traf[0].trun[0].data_offset.unwrap() as usize;
        let off_a = moof.traf[1].trun[0].data_offset.unwrap() as usize;
        assert_eq!(&bytes[off_v..off_v + 6], b"VVVVvv");
        assert_eq!(&bytes[off_a..off_a + 3], b"AAA");
        assert_eq!(
            moof.traf[0].tfdt.as_ref().unwrap().base_media_decode_time,
            1000
        );
        let entries: Vec<_> = moof.traf[0].trun[0].samples.iter().collect();
        assert_eq!(entries[1].cts, Some(-33));
        assert_eq!(entries[0].flags, Some(SYNC_SAMPLE_FLAGS));
        assert_eq!(entries[1].flags, Some(NON_SYNC_SAMPLE_FLAGS));
        // The sample payloads are the caller's own buffers, not copies.
        assert_eq!(chunks.parts[1].as_ptr(), v[0].data.as_ptr());
    }

    #[test]
    fn empty_fragment_is_an_error() {
        assert!(fragment(1, &[]).is_err());
        assert!(init_segment(&Tracks::default()).is_err());
    }
}
