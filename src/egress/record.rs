//! Recording: a hub subscriber per recorded stream writes fragmented MP4 to
//! `data_dir/recordings/{rec_id}.mp4`. The fragments come from the same sans-IO segmenter as
//! LL-HLS (parts of `fragment_ms`, segments cut on keyframes), so the file is an init segment
//! followed by ~1 s `moof`+`mdat` pairs, each written in one `write` and (by default)
//! `fsync`ed: the file plays while it grows, and a crash loses at most the open fragment.
//!
//! The subscriber is an internal one with a bounded, lossy queue: a disk slower than the
//! stream drops frames to the next keyframe (logged as a gap); it never slows the live stream.
//! Below `min_free_mb` of free disk the recording stops as `failed` / `disk_full`. A recording
//! is split into consecutive files at the first keyframe after `max_duration_secs`, and a new
//! file starts when the publisher's tracks change. Finished files stay fragmented MP4 (they
//! play in ffmpeg/ffprobe, VLC, browsers and as VOD HLS with byte ranges); no rewrite to a
//! progressive MP4 is done.
//!
//! On start, [`Recorders::recover`] scans recordings a crash left open, truncates each to its
//! last complete fragment and marks it `ready` with its true duration (or `failed` if nothing
//! was recoverable).
//!
//! With object storage (`[recording.storage] kind = "s3"`) the file is a spool: an uploader
//! ([`super::upload`]) sends its parts while it is written, a finished recording is
//! `uploading` until the object is complete and verified, and only then `ready` (the
//! `recording.ready` webhook waits for it); the spool is then deleted unless `keep_local`.
//! A restart resumes the uploads of this node's recordings from the database.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::config::RecordingConfig;
use crate::egress::hls::segmenter::{Segmenter, SegmenterConfig};
use crate::egress::storage::ObjectStorage;
use crate::egress::upload::{self, Outcome, Progress, Upload};
use crate::egress::vod::VodIndex;
use crate::events::EventBus;
use crate::hub::{Event, LiveStream, Subscription};
use crate::media::{Frame, TrackId, Tracks};
use crate::proto::mp4scan;
use crate::store::{RecordingRow, Store};

/// How often a running recording's size and duration are stored.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Every recorder of the server.
pub struct Recorders {
    /// This node's name, stored with each recording.
    node: String,
    /// In a cluster: only this node's recordings are recovered.
    cluster: bool,
    store: Store,
    config: RecordingConfig,
    dir: PathBuf,
    events: EventBus,
    active: Mutex<HashMap<String, Active>>,
    /// Bytes written to recordings since start (for `/metrics`).
    written: Arc<std::sync::atomic::AtomicU64>,
    /// Object storage, when recordings go there.
    storage: Option<Arc<ObjectStorage>>,
}

impl std::fmt::Debug for Recorders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorders")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

struct Active {
    stop: watch::Sender<bool>,
    recording: Arc<Mutex<Option<String>>>,
}

impl Recorders {
    /// Recorders writing under `data_dir/recordings`.
    /// `node`: this node's name, stored with each recording; `cluster`: recovery after a
    /// crash takes only this node's recordings (the others are other nodes' files).
    pub fn new(
        store: Store,
        config: RecordingConfig,
        data_dir: &Path,
        events: EventBus,
        (node, cluster): (String, bool),
        storage: Option<Arc<ObjectStorage>>,
    ) -> Arc<Self> {
        Arc::new(Recorders {
            node,
            cluster,
            store,
            config,
            dir: data_dir.join("recordings"),
            events,
            active: Mutex::new(HashMap::new()),
            written: Arc::default(),
            storage,
        })
    }

    /// The object storage recordings go to, if any.
    pub fn storage(&self) -> Option<&Arc<ObjectStorage>> {
        self.storage.as_ref()
    }

    /// Uploads a recording's spool as `progress` says it grows; announces the result.
    fn spawn_upload(&self, row: &RecordingRow, progress: watch::Receiver<Progress>) {
        let Some(storage) = self.storage.clone() else {
            return;
        };
        let up = Upload {
            storage: storage.clone(),
            store: self.store.clone(),
            id: row.id.clone(),
            path: self.path(row),
        };
        let events = self.events.clone();
        let path = self.path(row);
        tokio::spawn(async move {
            match upload::run(up, progress).await {
                Outcome::Ready(row) => {
                    tracing::info!(recording = %row.id, size = row.size_bytes, "recording uploaded and verified: ready");
                    announce(&events, &row);
                    if !storage.keep_local {
                        if let Err(err) = tokio::fs::remove_file(&path).await {
                            tracing::warn!(%err, recording = %row.id, "recording: cannot delete the uploaded spool");
                        }
                    }
                }
                Outcome::Failed(row) => announce(&events, &row),
                Outcome::Gone => {}
            }
        });
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file of a recording. Only ids from the database reach this, never user paths.
    pub fn path(&self, row: &RecordingRow) -> PathBuf {
        self.dir.join(&row.file)
    }

    /// Starts recording a live stream; `false` if it is already being recorded.
    pub fn start(self: &Arc<Self>, stream: Arc<LiveStream>) -> bool {
        let sub = stream.subscribe_internal();
        self.start_with(stream, sub)
    }

    /// Starts recording from a subscription taken earlier: a stream that goes live with
    /// `record` set is subscribed the moment it is published, before its settings are read,
    /// so that a publisher done before the lookup finishes (its GOP cache is gone once it
    /// ends) is still recorded whole.
    pub fn start_with(self: &Arc<Self>, stream: Arc<LiveStream>, sub: Subscription) -> bool {
        let mut active = self.active();
        if active.contains_key(&stream.id) {
            return false;
        }
        let (stop, stop_rx) = watch::channel(false);
        let recording = Arc::new(Mutex::new(None));
        active.insert(
            stream.id.clone(),
            Active {
                stop,
                recording: recording.clone(),
            },
        );
        drop(active);
        let recs = self.clone();
        tokio::spawn(async move {
            let id = stream.id.clone();
            recs.run(stream, sub, stop_rx, recording).await;
            recs.active().remove(&id);
        });
        true
    }

    /// Stops recording a stream (the file is finalised); `false` if it was not recording.
    pub fn stop(&self, stream_id: &str) -> bool {
        match self.active().get(stream_id) {
            Some(a) => {
                let _ = a.stop.send(true);
                true
            }
            None => false,
        }
    }

    /// Stops every recorder (shutdown).
    pub fn stop_all(&self) {
        for a in self.active().values() {
            let _ = a.stop.send(true);
        }
    }

    /// Resolves once no recorder runs.
    pub async fn idle(&self) {
        while !self.active().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The id of the recording being written for a stream, if any.
    pub fn current(&self, stream_id: &str) -> Option<String> {
        self.active().get(stream_id).and_then(|a| {
            a.recording
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }

    /// Whether a stream is being recorded (possibly waiting for its first keyframe).
    pub fn is_recording(&self, stream_id: &str) -> bool {
        self.active().contains_key(stream_id)
    }

    /// Recordings running now.
    pub fn active_count(&self) -> usize {
        self.active().len()
    }

    /// Bytes written to recording files since the server started.
    pub fn bytes_written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn run(
        self: &Arc<Self>,
        stream: Arc<LiveStream>,
        mut sub: Subscription,
        mut stop: watch::Receiver<bool>,
        current_id: Arc<Mutex<Option<String>>>,
    ) {
        if let Err(err) = tokio::fs::create_dir_all(&self.dir).await {
            tracing::error!(%err, dir = %self.dir.display(), "recording: cannot create the directory");
            return;
        }
        let mut tracks: Option<Arc<Tracks>> = None;
        let mut writer: Option<Writer> = None;
        let mut dropped = 0;
        let set_current = |w: &Option<Writer>| {
            *current_id.lock().unwrap_or_else(|e| e.into_inner()) =
                w.as_ref().map(|w| w.row.id.clone());
        };
        loop {
            let event = tokio::select! {
                e = sub.recv() => e,
                _ = stop.wait_for(|s| *s) => None,
            };
            let Some(event) = event else { break };
            if sub.dropped() > dropped {
                tracing::warn!(stream = %stream.id, frames = sub.dropped() - dropped, "recording: the disk fell behind; frames skipped to the next keyframe");
                dropped = sub.dropped();
            }
            match event {
                Event::Tracks(t) => {
                    // New tracks (reconnect, new resolution): a new file.
                    if let Some(w) = writer.take() {
                        w.finish(self).await;
                    }
                    let packaged = t.packaged();
                    tracks = (!packaged.list.is_empty()).then(|| Arc::new(packaged));
                }
                Event::Frame(frame) => {
                    let Some(t) = &tracks else { continue };
                    if t.get(frame.track).is_none() {
                        continue;
                    }
                    let split = writer.as_ref().is_some_and(|w| {
                        w.is_driver_keyframe(&frame)
                            && w.duration_at(&frame) >= self.config.max_duration_secs as f64
                    });
                    if split {
                        if let Some(w) = writer.take() {
                            tracing::info!(stream = %stream.id, recording = %w.row.id, "recording: max_duration reached, continuing in a new file");
                            w.finish(self).await;
                        }
                    }
                    if writer.is_none() {
                        // Files start on a keyframe of the driving track.
                        if !Writer::starts(t, &frame) {
                            continue;
                        }
                        match Writer::open(self, &stream.id, t.clone()).await {
                            Ok(w) => writer = Some(w),
                            Err(reason) => {
                                tracing::error!(stream = %stream.id, %reason, "recording: cannot start");
                                break;
                            }
                        }
                        set_current(&writer);
                    }
                    if let Some(w) = writer.as_mut() {
                        if let Err(reason) = w.push(frame, &self.config, &self.store).await {
                            if let Some(w) = writer.take() {
                                w.fail(self, reason).await;
                            }
                            set_current(&writer);
                            break;
                        }
                    }
                }
            }
        }
        if let Some(w) = writer.take() {
            w.finish(self).await;
        }
        set_current(&writer);
    }

    /// Scans recordings a crash left `recording`/`finalizing`: each is cut after its last
    /// complete fragment and becomes `ready` (or `failed` when nothing is recoverable).
    pub async fn recover(&self) -> usize {
        let mine = self.cluster.then_some(self.node.as_str());
        let mut rows = match self.store.unfinished_recordings(mine).await {
            Ok(r) => r,
            Err(err) => {
                tracing::error!(%err, "recording recovery: cannot list recordings");
                return 0;
            }
        };
        if self.cluster {
            // Of unknown node (older rows, older nodes): only those whose file is here; the
            // others may be being written by another node right now.
            if let Ok(unknown) = self.store.unfinished_recordings(Some("")).await {
                rows.extend(unknown.into_iter().filter(|r| self.path(r).exists()));
            }
        }
        let mut n = 0;
        for row in rows {
            let path = self.path(&row);
            let started = Instant::now();
            let result = tokio::task::spawn_blocking(move || recover_scan(&path)).await;
            if self.storage.is_some() {
                if let Ok(Ok(scanned)) = &result {
                    // Object storage: the recovered spool is uploaded (below), then ready.
                    let size = scanned.valid_len;
                    let ms = (scanned.duration_secs() * 1000.0) as u64;
                    let index = VodIndex::from_scanned(scanned).encode();
                    tracing::info!(recording = %row.id, size, "recording recovered after an unclean stop; uploading");
                    if let Err(err) = self
                        .store
                        .set_recording_uploading(&row.id, size, ms, &index)
                        .await
                    {
                        tracing::error!(%err, "recording recovery: cannot store the result");
                    }
                    n += 1;
                    continue;
                }
            }
            let (status, reason, size, duration) = match result {
                Ok(Ok(scanned)) => ("ready", None, scanned.valid_len, scanned.duration_secs()),
                Ok(Err(reason)) => (
                    "failed",
                    Some(format!("nothing recoverable: {reason}")),
                    0,
                    0.0,
                ),
                Err(err) => (
                    "failed",
                    Some(format!("nothing recoverable: {err}")),
                    0,
                    0.0,
                ),
            };
            tracing::info!(recording = %row.id, status, size, duration, elapsed_ms = started.elapsed().as_millis() as u64, "recording recovered after an unclean stop");
            match self
                .store
                .set_recording_status(&row.id, status, reason, size, (duration * 1000.0) as u64)
                .await
            {
                Ok(Some(r)) => self.announce(&r),
                Ok(None) => {}
                Err(err) => tracing::error!(%err, "recording recovery: cannot store the result"),
            }
            n += 1;
        }
        if self.storage.is_some() {
            self.resume_uploads().await;
        }
        n
    }

    /// Starts the uploads this node left unfinished (`uploading` rows whose spool is here).
    async fn resume_uploads(&self) {
        let mine = self.cluster.then_some(self.node.as_str());
        let mut rows = self.store.pending_uploads(mine).await.unwrap_or_default();
        if self.cluster {
            if let Ok(unknown) = self.store.pending_uploads(Some("")).await {
                rows.extend(unknown.into_iter().filter(|r| self.path(r).exists()));
            }
        }
        for row in rows {
            if !self.path(&row).exists() {
                let reason = "upload_failed: the local file to upload is gone".to_owned();
                tracing::warn!(recording = %row.id, %reason, "recording: cannot resume its upload");
                if let Ok(Some(r)) = self
                    .store
                    .set_recording_status(
                        &row.id,
                        "failed",
                        Some(reason),
                        row.size_bytes.max(0) as u64,
                        row.duration_ms.max(0) as u64,
                    )
                    .await
                {
                    self.announce(&r);
                }
                continue;
            }
            let size = row.size_bytes.max(0) as u64;
            tracing::info!(recording = %row.id, size, "recording: resuming its upload");
            let (tx, rx) = watch::channel(Progress {
                durable: size,
                final_len: Some(size),
            });
            // The receiver keeps the last value once the sender is gone.
            drop(tx);
            self.spawn_upload(&row, rx);
        }
    }

    /// Deletes finished recordings older than `delete_after_hours`, every minute until
    /// shutdown.
    pub fn spawn_retention(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let recs = self.clone();
        tokio::spawn(async move {
            let hours = recs.config.delete_after_hours;
            if hours == 0 {
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = crate::shutdown::requested(&mut shutdown) => return,
                }
                let cutoff = SystemTime::now() - Duration::from_secs(hours * 3600);
                let cutoff = crate::proto::playlist::format_pdt(cutoff);
                let old = match recs.store.recordings_ended_before(&cutoff).await {
                    Ok(rows) => rows,
                    Err(err) => {
                        tracing::warn!(%err, "retention: cannot list recordings");
                        continue;
                    }
                };
                for row in old {
                    if let Err(err) = recs.delete(&row).await {
                        tracing::warn!(%err, recording = %row.id, "retention: cannot delete");
                    } else {
                        tracing::info!(recording = %row.id, "retention: deleted");
                    }
                }
            }
        })
    }

    /// Deletes a recording's object (in object storage), file and row. An object store that
    /// cannot be reached keeps the row (and says so): the object must not be orphaned.
    pub async fn delete(&self, row: &RecordingRow) -> Result<(), String> {
        if let Some(storage) = &self.storage {
            if row.storage == "s3" || row.object_key.is_some() {
                let key = row
                    .object_key
                    .clone()
                    .unwrap_or_else(|| storage.key(&row.id));
                if let Some(upload_id) = &row.upload_id {
                    let _ = storage.abort(&key, upload_id).await;
                }
                storage.delete(&key).await.map_err(|e| e.to_string())?;
            }
        }
        match tokio::fs::remove_file(self.path(row)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.to_string()),
        }
        self.store
            .delete_recording(&row.id)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn announce(&self, row: &RecordingRow) {
        announce(&self.events, row);
    }
}

/// `recording.ready` or `recording.failed` for a finished row (in object storage: with the
/// object's key and checksums, never a URL).
fn announce(events: &EventBus, row: &RecordingRow) {
    let kind = if row.status == "ready" {
        "recording.ready"
    } else {
        "recording.failed"
    };
    let mut recording = serde_json::json!({
        "id": row.id, "stream_id": row.stream_id, "status": row.status,
        "reason": row.reason, "duration_ms": row.duration_ms, "size_bytes": row.size_bytes,
        "storage": row.storage,
    });
    if row.storage == "s3" {
        recording["object_key"] = serde_json::json!(row.object_key);
        recording["etag"] = serde_json::json!(row.etag);
        recording["sha256"] = serde_json::json!(row.sha256);
    }
    events.publish(kind, serde_json::json!({ "recording": recording }));
}

/// Truncates `path` after its last complete fragment; returns (size, duration seconds).
pub fn recover_file(path: &Path) -> Result<(u64, f64), String> {
    recover_scan(path).map(|s| (s.valid_len, s.duration_secs()))
}

/// Truncates `path` after its last complete fragment; the scan of what is left.
pub fn recover_scan(path: &Path) -> Result<mp4scan::Scanned, String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let scanned = mp4scan::scan(&mut file, len).map_err(|e| e.to_string())?;
    if scanned.fragments.is_empty() {
        return Err("no complete fragment".into());
    }
    if scanned.valid_len < len {
        file.set_len(scanned.valid_len).map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
    }
    Ok(scanned)
}

/// Free bytes for unprivileged users on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// One file being written.
struct Writer {
    row: RecordingRow,
    path: PathBuf,
    file: tokio::fs::File,
    segmenter: Segmenter,
    /// Next part to write: (segment msn, part index).
    next: (u64, usize),
    bytes: u64,
    driver: TrackId,
    driver_timescale: u32,
    first_dts: Option<i64>,
    last_dts: i64,
    last_progress: Instant,
    written: Arc<std::sync::atomic::AtomicU64>,
    /// To the uploader (object storage): how far the file is final.
    upload: Option<watch::Sender<Progress>>,
}

impl Writer {
    fn driver_of(tracks: &Tracks) -> Option<(TrackId, u32)> {
        let t = tracks
            .primary_video()
            .and_then(|id| tracks.get(id))
            .or_else(|| tracks.list.first())?;
        Some((t.id, t.timescale))
    }

    /// Whether a new file may start at this frame.
    fn starts(tracks: &Tracks, frame: &Frame) -> bool {
        Self::driver_of(tracks).is_some_and(|(d, _)| d == frame.track && frame.keyframe)
    }

    fn is_driver_keyframe(&self, frame: &Frame) -> bool {
        frame.track == self.driver && frame.keyframe
    }

    /// Media time from the file's first frame to `frame` (a driver-track frame).
    fn duration_at(&self, frame: &Frame) -> f64 {
        self.first_dts.map_or(0.0, |f| {
            (frame.dts - f) as f64 / f64::from(self.driver_timescale.max(1))
        })
    }

    fn duration_secs(&self) -> f64 {
        self.first_dts.map_or(0.0, |f| {
            (self.last_dts - f) as f64 / f64::from(self.driver_timescale.max(1))
        })
    }

    async fn open(
        recs: &Recorders,
        stream_id: &str,
        tracks: Arc<Tracks>,
    ) -> Result<Writer, String> {
        let (driver, driver_timescale) = Self::driver_of(&tracks).ok_or("no tracks")?;
        let video = tracks
            .list
            .iter()
            .filter(|t| t.codec.is_packaged())
            .find_map(|t| t.codec.video_info())
            .map(|i| (i.width, i.height));
        let codecs: Vec<String> = tracks.list.iter().map(|t| t.codec.codec_string()).collect();
        let mut segmenter = Segmenter::new(SegmenterConfig {
            part_target: recs.config.fragment_ms as f64 / 1000.0,
            segment_target: recs.config.fragment_ms as f64 / 1000.0,
            window: 4,
        });
        segmenter
            .push_tracks(tracks.clone())
            .map_err(|e| format!("init segment: {e}"))?;
        let init = segmenter.init(0).ok_or("no init segment")?;
        let row = recs
            .store
            .create_recording(
                stream_id,
                &recs.node,
                video.map(|v| v.0),
                video.map(|v| v.1),
                &codecs.join(","),
            )
            .await
            .map_err(|e| e.to_string())?;
        let path = recs.path(&row);
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| format!("write_error: {e}"))?;
        file.write_all(&init)
            .await
            .map_err(|e| format!("write_error: {e}"))?;
        tracing::info!(stream = %stream_id, recording = %row.id, file = %path.display(), "recording started");
        let upload = recs.storage.as_ref().map(|_| {
            let (tx, rx) = watch::channel(Progress {
                durable: init.len() as u64,
                final_len: None,
            });
            recs.spawn_upload(&row, rx);
            tx
        });
        recs.events.publish(
            "recording.started",
            serde_json::json!({ "recording": { "id": row.id, "stream_id": stream_id } }),
        );
        Ok(Writer {
            row,
            path,
            file,
            segmenter,
            next: (0, 0),
            bytes: init.len() as u64,
            driver,
            driver_timescale,
            first_dts: None,
            last_dts: 0,
            last_progress: Instant::now(),
            written: recs.written.clone(),
            upload,
        })
    }

    /// One frame in; every part the segmenter closes goes to disk as one write.
    async fn push(
        &mut self,
        frame: Frame,
        config: &RecordingConfig,
        store: &Store,
    ) -> Result<(), String> {
        if frame.track == self.driver {
            self.first_dts.get_or_insert(frame.dts);
            self.last_dts = frame.dts;
        }
        self.segmenter
            .push_frame(frame, SystemTime::now())
            .map_err(|e| format!("write_error: {e}"))?;
        self.write_parts(config).await?;
        if self.last_progress.elapsed() >= PROGRESS_EVERY {
            self.last_progress = Instant::now();
            let ms = (self.duration_secs() * 1000.0) as u64;
            if let Err(err) = store
                .update_recording_progress(&self.row.id, self.bytes, ms)
                .await
            {
                tracing::warn!(%err, "recording: cannot store progress");
            }
        }
        Ok(())
    }

    async fn write_parts(&mut self, config: &RecordingConfig) -> Result<(), String> {
        loop {
            let (msn, index) = self.next;
            if let Some(chunks) = self.segmenter.part(msn, index) {
                if let Some(dir) = self.path.parent() {
                    if free_bytes(dir)
                        .is_some_and(|f| f < config.min_free_mb.saturating_mul(1024 * 1024))
                    {
                        return Err("disk_full".into());
                    }
                }
                let bytes = chunks.to_vec();
                self.file
                    .write_all(&bytes)
                    .await
                    .map_err(|e| format!("write_error: {e}"))?;
                if config.fsync {
                    self.file
                        .sync_data()
                        .await
                        .map_err(|e| format!("write_error: {e}"))?;
                }
                self.bytes += bytes.len() as u64;
                self.written
                    .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if let Some(up) = &self.upload {
                    // The uploader reads the file: the bytes must have reached it.
                    self.file
                        .flush()
                        .await
                        .map_err(|e| format!("write_error: {e}"))?;
                    let durable = self.bytes;
                    up.send_modify(|p| p.durable = durable);
                }
                self.next = (msn, index + 1);
                continue;
            }
            let closed = self
                .segmenter
                .playlist()
                .segments
                .iter()
                .any(|s| s.msn == msn);
            if closed {
                self.next = (msn + 1, 0);
                continue;
            }
            return Ok(());
        }
    }

    /// Writes what is held, then scans the file for its true size and duration: `ready`.
    async fn finish(mut self, recs: &Recorders) {
        self.segmenter.finish(true);
        let written = self.write_parts(&recs.config).await;
        let _ = self.file.flush().await;
        let _ = self.file.sync_all().await;
        drop(self.file);
        if let Err(reason) = written {
            return Self::mark_failed(recs, &self.row, reason).await;
        }
        let _ = recs
            .store
            .set_recording_status(&self.row.id, "finalizing", None, self.bytes, 0)
            .await;
        let path = self.path.clone();
        let scanned = tokio::task::spawn_blocking(move || recover_scan(&path)).await;
        if let (Some(up), Ok(Ok(scanned))) = (self.upload.take(), &scanned) {
            // Object storage: ready once the upload is complete and verified.
            let size = scanned.valid_len;
            let ms = (scanned.duration_secs() * 1000.0) as u64;
            let index = VodIndex::from_scanned(scanned).encode();
            match recs
                .store
                .set_recording_uploading(&self.row.id, size, ms, &index)
                .await
            {
                Ok(_) => {
                    tracing::info!(recording = %self.row.id, size, "recording finished; uploading the rest");
                    up.send_modify(|p| p.final_len = Some(size));
                }
                Err(err) => tracing::error!(%err, "recording: cannot store the result"),
            }
            return;
        }
        match scanned.map(|r| r.map(|s| (s.valid_len, s.duration_secs()))) {
            Ok(Ok((size, duration))) => {
                match recs
                    .store
                    .set_recording_status(
                        &self.row.id,
                        "ready",
                        None,
                        size,
                        (duration * 1000.0) as u64,
                    )
                    .await
                {
                    Ok(Some(row)) => {
                        tracing::info!(recording = %row.id, size, duration, "recording ready");
                        recs.announce(&row);
                    }
                    Ok(None) => {}
                    Err(err) => tracing::error!(%err, "recording: cannot store the result"),
                }
            }
            Ok(Err(reason)) => {
                Self::mark_failed(recs, &self.row, format!("no media: {reason}")).await
            }
            Err(err) => Self::mark_failed(recs, &self.row, err.to_string()).await,
        }
    }

    async fn fail(mut self, recs: &Recorders, reason: String) {
        let _ = self.file.flush().await;
        let _ = self.file.sync_all().await;
        Self::mark_failed(recs, &self.row, reason).await;
    }

    async fn mark_failed(recs: &Recorders, row: &RecordingRow, reason: String) {
        tracing::warn!(recording = %row.id, %reason, "recording failed");
        let path = recs.path(row);
        let (size, duration) = tokio::task::spawn_blocking(move || recover_file(&path))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or((0, 0.0));
        match recs
            .store
            .set_recording_status(
                &row.id,
                "failed",
                Some(reason),
                size,
                (duration * 1000.0) as u64,
            )
            .await
        {
            Ok(Some(r)) => recs.announce(&r),
            Ok(None) => {}
            Err(err) => tracing::error!(%err, "recording: cannot store the failure"),
        }
    }
}
