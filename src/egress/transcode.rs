//! Shared audio transcoders: one per (live stream, direction), started by the first consumer
//! that needs the other codec and stopped when the last one lets go, so a stream's audio is
//! decoded once however many WebRTC viewers or legacy RTMP destinations it has, and not at all
//! when nobody needs it.
//!
//! A transcoder subscribes to the hub like any internal consumer and broadcasts the converted
//! frames; they keep the source track's id and its timeline (see [`crate::media::audio`]).
//! A consumer that falls behind loses frames (`Lagged`), never delays the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::broadcast;

use crate::hub::{Event, LiveStream};
use crate::media::audio::{AudioQuality, Direction, Transcoder};
use crate::media::{CodecConfig, Frame, Track, TrackId, Tracks};

/// Converted frames buffered per consumer: about 5 s of 10 ms Opus packets (a new
/// transcoder converts the GOP cache in one burst) or 10 s of AAC frames.
const FEED_CAPACITY: usize = 512;

/// The transcoders of every live stream.
pub struct AudioTranscoders {
    enabled: bool,
    quality: AudioQuality,
    running: Mutex<HashMap<(String, Direction), Weak<Running>>>,
}

impl std::fmt::Debug for AudioTranscoders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioTranscoders")
            .field("enabled", &self.enabled)
            .field("running", &self.running())
            .finish()
    }
}

/// One running transcoder; dropping the last [`AudioFeed`] that holds it stops its task.
struct Running {
    stream: Weak<LiveStream>,
    /// Weak, so receivers see the end when the task (the only strong sender) stops.
    tx: broadcast::WeakSender<Frame>,
    task: tokio::task::AbortHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A consumer's share of a transcoder: the converted frames, from now on.
pub struct AudioFeed {
    _running: Arc<Running>,
    /// Converted frames (the source track's id, the output codec's timescale).
    pub rx: broadcast::Receiver<Frame>,
}

impl AudioTranscoders {
    /// The registry; `enabled = false` makes every [`AudioTranscoders::feed`] `None`.
    pub fn new(enabled: bool, quality: AudioQuality) -> Arc<Self> {
        Arc::new(AudioTranscoders {
            enabled,
            quality,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Whether audio transcoding is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The track a consumer of `tracks` gets in `direction`: the first audio track the
    /// direction takes, converted (same id). `None` when off or nothing to convert.
    pub fn output_track(&self, tracks: &Tracks, direction: Direction) -> Option<Track> {
        if !self.enabled {
            return None;
        }
        crate::media::audio::converted_track(tracks, direction)
    }

    /// Joins (or starts) the stream's transcoder in `direction`. The feed carries converted
    /// frames of whichever source track of that codec the stream has now or later.
    pub fn feed(&self, stream: &Arc<LiveStream>, direction: Direction) -> Option<AudioFeed> {
        if !self.enabled {
            return None;
        }
        let key = (stream.id.clone(), direction);
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|_, w| w.strong_count() > 0);
        if let Some(r) = running.get(&key).and_then(Weak::upgrade) {
            let same_stream = r.stream.upgrade().is_some_and(|s| Arc::ptr_eq(&s, stream));
            if let Some(tx) = r.tx.upgrade().filter(|_| same_stream) {
                let rx = tx.subscribe();
                return Some(AudioFeed { _running: r, rx });
            }
        }
        let (tx, rx) = broadcast::channel(FEED_CAPACITY);
        let weak = tx.downgrade();
        let task = tokio::spawn(run(stream.clone(), direction, self.quality, tx));
        let r = Arc::new(Running {
            stream: Arc::downgrade(stream),
            tx: weak,
            task: task.abort_handle(),
        });
        running.insert(key, Arc::downgrade(&r));
        Some(AudioFeed { _running: r, rx })
    }

    /// Transcoders running now (for tests and metrics).
    pub fn running(&self) -> usize {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.values().filter(|w| w.strong_count() > 0).count()
    }
}

/// Converts the stream's source audio until the stream ends or the task is aborted.
async fn run(
    stream: Arc<LiveStream>,
    direction: Direction,
    quality: AudioQuality,
    tx: broadcast::Sender<Frame>,
) {
    let mut sub = stream.subscribe_internal();
    // Hold no strong reference while waiting: the stream may end.
    let name = stream.id.clone();
    drop(stream);
    let mut current: Option<Transcoder> = None;
    let mut source = None;
    let mut errors: u64 = 0;
    tracing::info!(stream = %name, ?direction, "transcode: audio transcoder started");
    while let Some(event) = sub.recv().await {
        match event {
            Event::Tracks(tracks) => {
                let track = tracks.list.iter().find(|t| direction.takes(&t.codec));
                if track.map(|t| (t.id, &t.codec)) == source.as_ref().map(|(i, c)| (*i, c)) {
                    continue;
                }
                source = track.map(|t| (t.id, t.codec.clone()));
                current = match track.map(|t| Transcoder::new(t, direction, quality)) {
                    Some(Ok(t)) => t,
                    Some(Err(e)) => {
                        tracing::warn!(stream = %name, error = %e, "transcode: cannot convert this audio");
                        None
                    }
                    None => None,
                };
            }
            Event::Frame(frame) => {
                let Some(t) = current.as_mut() else { continue };
                if source.as_ref().is_none_or(|(id, _)| *id != frame.track) {
                    continue;
                }
                match t.push(&frame) {
                    Ok(frames) => {
                        for f in frames {
                            let _ = tx.send(f);
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        if errors.is_power_of_two() {
                            tracing::debug!(stream = %name, error = %e, errors, "transcode: a frame was lost");
                        }
                    }
                }
            }
        }
    }
    tracing::info!(stream = %name, ?direction, "transcode: audio transcoder stopped");
}

/// The next converted frame of `feed`; a feed whose transcoder ended is dropped (and then
/// this never resolves, so it can sit in a `select!`). A consumer that lagged skips ahead.
pub async fn next_frame(feed: &mut Option<AudioFeed>) -> Option<Frame> {
    let Some(f) = feed.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match f.rx.recv().await {
            Ok(frame) => return Some(frame),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => {
                *feed = None;
                return None;
            }
        }
    }
}

/// Opus → AAC in the consumer's own task, for a consumer there is one of per stream anyway
/// (the HLS packager): its hub events with the Opus track replaced by AAC.
pub struct InlineAac {
    quality: AudioQuality,
    current: Option<(TrackId, CodecConfig, Transcoder)>,
}

impl InlineAac {
    /// Converts with these settings.
    pub fn new(quality: AudioQuality) -> Self {
        InlineAac {
            quality,
            current: None,
        }
    }

    /// The events to pass on for `event`: tracks with Opus announced as AAC, Opus frames as
    /// the AAC frames now complete (none while the encoder fills its window).
    pub fn map(&mut self, event: Event) -> Vec<Event> {
        match event {
            Event::Tracks(tracks) => {
                let Some(source) = tracks
                    .list
                    .iter()
                    .find(|t| Direction::OpusToAac.takes(&t.codec))
                else {
                    self.current = None;
                    return vec![Event::Tracks(tracks)];
                };
                let same = self
                    .current
                    .as_ref()
                    .is_some_and(|(id, codec, _)| *id == source.id && *codec == source.codec);
                if !same {
                    self.current = match Transcoder::new(source, Direction::OpusToAac, self.quality)
                    {
                        Ok(Some(t)) => Some((source.id, source.codec.clone(), t)),
                        _ => None,
                    };
                }
                let output = self
                    .current
                    .as_ref()
                    .and_then(|(_, _, t)| t.output_track().ok());
                let Some(aac) = output else {
                    self.current = None;
                    return vec![Event::Tracks(tracks)];
                };
                let list = tracks
                    .list
                    .iter()
                    .map(|t| {
                        if t.id == aac.id {
                            aac.clone()
                        } else {
                            t.clone()
                        }
                    })
                    .collect();
                vec![Event::Tracks(Arc::new(Tracks { list }))]
            }
            Event::Frame(frame) => match self.current.as_mut() {
                Some((id, _, t)) if *id == frame.track => t
                    .push(&frame)
                    .map(|frames| frames.into_iter().map(Event::Frame).collect())
                    .unwrap_or_default(),
                _ => vec![Event::Frame(frame)],
            },
        }
    }
}
