// The player of /play/{id} and /embed/{id}: asks /play/{id}/info what the stream offers and
// picks the best path this browser supports — WHEP (sub-second), native HLS, hls.js (only
// when the operator configured [web] hlsjs_url), MJPEG for cameras — says which, shows the
// latency, shows offline/ended states and reconnects by itself.
(() => {
  'use strict';
  const body = document.body;
  const id = body.dataset.streamId;
  const hlsjsUrl = body.dataset.hlsjs || '';
  const token = new URLSearchParams(location.search).get('token') || '';
  const $ = (name) => document.getElementById(name);
  const video = $('video');
  const img = $('mjpeg');
  const overlay = $('overlay');
  const pathEl = $('path');
  const latencyEl = $('latency');
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const withToken = (url) =>
    token ? url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token) : url;

  // State for people (the overlay) and for tests (window.__player, data-state).
  const player = (window.__player = { state: 'connecting', path: '', frames: 0, latencyMs: null, message: '' });
  let cleanups = [];

  function setState(state, message) {
    player.state = state;
    player.message = message || '';
    body.dataset.state = state;
    overlay.textContent = message || '';
    overlay.hidden = !message;
  }
  function setPath(label) {
    player.path = label;
    body.dataset.path = label;
    pathEl.textContent = label || '—';
  }
  function setLatency(text, ms) {
    player.latencyMs = ms;
    latencyEl.textContent = text;
  }
  function cleanup() {
    const list = cleanups;
    cleanups = [];
    for (const f of list) {
      try { f(); } catch (_) { /* already gone */ }
    }
    video.pause();
    video.removeAttribute('src');
    video.srcObject = null;
    video.load();
    img.removeAttribute('src');
    img.hidden = true;
    video.hidden = false;
    setLatency('latency —', null);
  }

  if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) {
    const tick = () => {
      player.frames++;
      video.requestVideoFrameCallback(tick);
    };
    video.requestVideoFrameCallback(tick);
  }
  video.addEventListener('playing', () => setState('playing'));

  async function info() {
    const r = await fetch(withToken('/play/' + encodeURIComponent(id) + '/info'), { cache: 'no-store' });
    let j = {};
    try { j = await r.json(); } catch (_) { /* not JSON */ }
    return { status: r.status, body: j };
  }

  // Resolves when the stream is no longer live (checked every 5 s).
  function whileLive() {
    return new Promise((resolve) => {
      const t = setInterval(async () => {
        try {
          const r = await info();
          if (r.status !== 200 || r.body.state !== 'live') resolve();
        } catch (_) { resolve(); }
      }, 5000);
      cleanups.push(() => clearInterval(t));
    });
  }

  function every(ms, f) {
    const t = setInterval(f, ms);
    cleanups.push(() => clearInterval(t));
  }

  async function playWhep(url) {
    setPath('WebRTC (WHEP)');
    const pc = new RTCPeerConnection();
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const media = new MediaStream();
    pc.ontrack = (e) => {
      media.addTrack(e.track);
      video.srcObject = media;
      video.play().catch(() => {});
    };
    let session = null;
    cleanups.push(() => {
      pc.close();
      if (session) fetch(withToken(session), { method: 'DELETE', keepalive: true }).catch(() => {});
    });
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((done) => {
      if (pc.iceGatheringState === 'complete') return done();
      pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && done());
      setTimeout(done, 1500);
    });
    const r = await fetch(withToken(url), {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp' },
      body: pc.localDescription.sdp,
    });
    if (r.status !== 201) throw new Error('WHEP answered ' + r.status);
    session = r.headers.get('Location');
    await pc.setRemoteDescription({ type: 'answer', sdp: await r.text() });
    every(1000, async () => {
      // Receiver-side delay: jitter buffer + half the round trip.
      const stats = await pc.getStats();
      let buffer = null;
      let rtt = 0;
      stats.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video' && s.jitterBufferEmittedCount > 0) {
          buffer = (s.jitterBufferDelay / s.jitterBufferEmittedCount) * 1000;
        }
        if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime) {
          rtt = s.currentRoundTripTime * 1000;
        }
      });
      if (buffer !== null) {
        const ms = Math.round(buffer + rtt / 2);
        setLatency('latency ≈ ' + ms + ' ms', ms);
      }
    });
    await new Promise((resolve) => {
      pc.addEventListener('connectionstatechange', () => {
        if (['failed', 'disconnected', 'closed'].includes(pc.connectionState)) resolve();
      });
      whileLive().then(resolve);
    });
  }

  function hlsLatency(getLatency) {
    every(1000, () => {
      const s = getLatency();
      if (s !== null && isFinite(s)) setLatency('latency ≈ ' + s.toFixed(1) + ' s behind live', Math.round(s * 1000));
    });
  }

  // Distance from the playhead to the live edge: the end of the seekable range, or (when the
  // browser exposes none, as Chromium's native HLS) the end of what it has loaded.
  function edgeLatency() {
    for (const r of [video.seekable, video.buffered]) {
      if (r.length && isFinite(r.end(r.length - 1))) return Math.max(0, r.end(r.length - 1) - video.currentTime);
    }
    return null;
  }

  // Resolves on a fatal error, the end, or 10 s without progress.
  function watchVideo() {
    return new Promise((resolve) => {
      let last = -1;
      let still = 0;
      every(1000, () => {
        if (video.currentTime === last && !video.paused) still++;
        else still = 0;
        last = video.currentTime;
        if (still >= 10) resolve();
      });
      video.addEventListener('error', resolve, { once: true });
      video.addEventListener('ended', resolve, { once: true });
      whileLive().then(resolve);
    });
  }

  async function playNativeHls(url) {
    setPath('HLS (native)');
    video.src = withToken(url);
    video.play().catch(() => {});
    hlsLatency(edgeLatency);
    await watchVideo();
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      if (window.Hls) return resolve();
      const s = document.createElement('script');
      s.src = src;
      s.onload = resolve;
      s.onerror = () => reject(new Error('hls.js could not be loaded from ' + src));
      document.head.appendChild(s);
    });
  }

  async function playHlsJs(url) {
    setPath('HLS (hls.js)');
    await loadScript(hlsjsUrl);
    const hls = new window.Hls({ lowLatencyMode: true });
    cleanups.push(() => hls.destroy());
    const fatal = new Promise((resolve) => {
      hls.on(window.Hls.Events.ERROR, (_, data) => data.fatal && resolve());
    });
    hls.loadSource(withToken(url));
    hls.attachMedia(video);
    video.play().catch(() => {});
    hlsLatency(() => (typeof hls.latency === 'number' ? hls.latency : edgeLatency()));
    await Promise.race([fatal, watchVideo()]);
  }

  async function playMjpeg(url) {
    setPath('MJPEG');
    video.hidden = true;
    img.hidden = false;
    img.addEventListener('load', () => setState('playing'), { once: true });
    img.src = withToken(url);
    setLatency('latency: each picture as it arrives', null);
    await new Promise((resolve) => {
      img.addEventListener('error', resolve, { once: true });
      whileLive().then(resolve);
    });
  }

  // Behind a cache ([hls] cdn) the server cannot see HLS viewers: the page tells it.
  function hlsBeacon(p) {
    if (!p.hls_beacon_url) return;
    const send = () => fetch(withToken(p.hls_beacon_url), { method: 'POST', keepalive: true }).catch(() => {});
    send();
    every(10000, send);
  }

  async function playHls(p, native) {
    hlsBeacon(p);
    await (native ? playNativeHls(p.hls_url) : playHlsJs(p.hls_url));
  }

  // `?path=whep|hls|hlsjs|mjpeg` forces one path (to compare them, or to work around a
  // browser); otherwise the best one available is taken.
  const forced = new URLSearchParams(location.search).get('path') || '';

  function choose(s) {
    const p = s.playback || {};
    if (forced) {
      if (forced === 'whep' && p.whep_url) return () => playWhep(p.whep_url);
      if (forced === 'hls' && p.hls_url) return () => playHls(p, true);
      if (forced === 'hlsjs' && p.hls_url && hlsjsUrl) return () => playHls(p, false);
      if (forced === 'mjpeg' && p.mjpeg_url) return () => playMjpeg(p.mjpeg_url);
      return null;
    }
    if (p.mjpeg_url && s.camera) return () => playMjpeg(p.mjpeg_url);
    if (p.whep_url && 'RTCPeerConnection' in window) return () => playWhep(p.whep_url);
    if (p.hls_url && video.canPlayType('application/vnd.apple.mpegurl')) return () => playHls(p, true);
    if (p.hls_url && hlsjsUrl && window.MediaSource) return () => playHls(p, false);
    if (p.mjpeg_url) return () => playMjpeg(p.mjpeg_url);
    return null;
  }

  async function run() {
    for (;;) {
      let r;
      try {
        r = await info();
      } catch (_) {
        setState('offline', 'The server cannot be reached. Retrying…');
        await sleep(3000);
        continue;
      }
      if (r.status === 401) {
        setState('denied', 'This stream is private. Open it with the play link you were given (it ends in ?token=…).');
        return;
      }
      if (r.status === 403) {
        setState('denied', 'This play link is not valid or has expired. Ask for a new one.');
        return;
      }
      if (r.status === 404) {
        setState('notfound', 'There is no such stream.');
        return;
      }
      if (r.status !== 200) {
        setState('offline', 'The server answered ' + r.status + '. Retrying…');
        await sleep(3000);
        continue;
      }
      const s = r.body;
      document.title = s.title;
      $('title').textContent = s.title;
      if (s.state !== 'live') {
        setPath('');
        setState(
          s.state === 'ended' ? 'ended' : 'offline',
          s.state === 'ended'
            ? 'The stream has ended. It plays here again if it comes back.'
            : 'The stream is offline. It starts here when it goes live.'
        );
        await sleep(3000);
        continue;
      }
      const play = choose(s);
      if (!play) {
        setState(
          'unsupported',
          forced
            ? 'The playback path "' + forced + '" is not available for this stream here.'
            : 'This browser cannot play this stream (no WebRTC, no HLS).'
        );
        return;
      }
      setState('connecting', 'Connecting…');
      try {
        await play();
      } catch (e) {
        setState('connecting', String(e.message || e));
        await sleep(2000);
      }
      cleanup();
      setState('reconnecting', 'The stream was interrupted. Reconnecting…');
      await sleep(1000);
    }
  }

  window.addEventListener('pagehide', cleanup);
  run();
})();
