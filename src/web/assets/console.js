// The admin console: signs in with an API token (kept in session storage, sent only as a
// Bearer header), lists streams every 3 s, and for one stream shows health, charts, the
// player, restream destinations and recordings, with stop / rotate key / create.
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const KEY = 'media-server-token';
  const REFRESH_MS = 3000;
  const HISTORY = 200;
  let token = sessionStorage.getItem(KEY) || '';
  let selected = null;
  let timer = null;
  const samples = new Map(); // stream id → [{ t, in, out, viewers }]

  // ---- helpers -------------------------------------------------------------------------
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? '' : String(c)));
    return e;
  }
  const kbps = (bps) => (bps ? (bps / 1000).toFixed(0) + ' kbit/s' : '—');
  const bytes = (n) => (n > 1e9 ? (n / 1e9).toFixed(2) + ' GB' : n > 1e6 ? (n / 1e6).toFixed(1) + ' MB' : (n / 1e3).toFixed(0) + ' kB');

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error && body.error.message) || 'HTTP ' + status);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: 'Bearer ' + token };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
    let j = null;
    if (r.status !== 204) {
      try { j = await r.json(); } catch (_) { j = null; }
    }
    if (r.status === 401) {
      signOut('Your session ended: the token is no longer accepted.');
      throw new ApiError(401, j);
    }
    if (!r.ok) throw new ApiError(r.status, j);
    return j;
  }

  // ---- sign in -------------------------------------------------------------------------
  async function signIn(candidate) {
    const r = await fetch('/api/v1/streams?limit=1', { headers: { Authorization: 'Bearer ' + candidate }, cache: 'no-store' });
    return r.ok;
  }

  function signOut(message) {
    token = '';
    sessionStorage.removeItem(KEY);
    clearInterval(timer);
    timer = null;
    selected = null;
    $('app').hidden = true;
    $('sign-out').hidden = true;
    $('signin').hidden = false;
    $('server-stats').textContent = '';
    $('signin-error').textContent = message || '';
    $('token').value = '';
  }

  function enter() {
    $('signin').hidden = true;
    $('app').hidden = false;
    $('sign-out').hidden = false;
    refresh();
    timer = setInterval(refresh, REFRESH_MS);
  }

  $('signin-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const candidate = $('token').value.trim();
    $('signin-error').textContent = '';
    let ok = false;
    try { ok = await signIn(candidate); } catch (_) { ok = false; }
    if (!ok) {
      // The same words whatever was wrong: nothing about which part of a token matched.
      $('signin-error').textContent = 'That token was not accepted.';
      return;
    }
    token = candidate;
    sessionStorage.setItem(KEY, token);
    $('token').value = '';
    enter();
  });
  $('sign-out').addEventListener('click', () => signOut(''));

  // ---- stream list ---------------------------------------------------------------------
  function resolution(s) {
    const v = (s.live && s.live.tracks || []).find((t) => t.kind === 'video' && t.width);
    return v ? v.width + '×' + v.height : '—';
  }

  function record(s) {
    const list = samples.get(s.id) || [];
    const bw = (s.live && s.live.bandwidth) || {};
    list.push({ t: Date.now(), in: bw.in_bps_1s || 0, out: bw.out_bps_1s || 0, viewers: s.viewer_count || 0 });
    while (list.length > HISTORY) list.shift();
    samples.set(s.id, list);
  }

  async function refresh() {
    try {
      const [list, stats] = await Promise.all([api('GET', '/api/v1/streams?limit=100'), api('GET', '/api/v1/stats').catch(() => null)]);
      if (stats) {
        const bw = stats.bandwidth || {};
        $('server-stats').textContent =
          (stats.live_streams ?? '?') + ' live · ' + (stats.total_viewers ?? '?') + ' viewers · in ' +
          kbps(bw.in_bps_10s) + ' · out ' + kbps(bw.out_bps_10s);
      }
      const body = $('streams').querySelector('tbody');
      body.replaceChildren();
      for (const s of list.data) {
        record(s);
        const live = s.live || {};
        const bw = live.bandwidth || {};
        const grade = live.health_grade;
        const tr = el('tr', { class: 'clickable' + (s.id === selected ? ' selected' : ''), tabindex: '0', 'data-id': s.id },
          el('td', {}, el('a', { href: '#' + s.id }, s.title), el('div', { class: 'muted' }, s.app + '/' + s.name)),
          el('td', { class: 'state-' + s.state }, s.state),
          el('td', {}, live.protocol || s.protocol || '—'),
          el('td', {}, resolution(s)),
          el('td', { class: 'viewers' }, s.viewer_count),
          el('td', {}, kbps(bw.in_bps_1s)),
          el('td', {}, kbps(bw.out_bps_1s)),
          el('td', { class: grade ? 'grade-' + grade : '' }, grade ? grade + ' (' + live.health_score + ')' : '—'));
        const open = (e) => { e.preventDefault(); select(s.id); };
        tr.addEventListener('click', open);
        tr.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') open(e); });
        body.append(tr);
      }
      $('streams-empty').hidden = list.data.length > 0;
      if (selected) await refreshDetail();
    } catch (e) {
      if (e.status !== 401) console.warn('refresh failed', e);
    }
  }

  // ---- charts --------------------------------------------------------------------------
  function chart(svg, series, max, label) {
    const W = 300, H = 100, PAD = 14;
    svg.replaceChildren();
    const ns = 'http://www.w3.org/2000/svg';
    const mk = (tag, attrs) => {
      const e = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      return e;
    };
    svg.append(mk('line', { class: 'axis', x1: PAD, y1: H - PAD, x2: W, y2: H - PAD }));
    const top = mk('text', { x: 2, y: 10 });
    top.textContent = label(max);
    svg.append(top);
    let points = 0;
    for (const s of series) {
      if (s.values.length === 0) continue;
      const n = s.values.length;
      const pts = s.values.map((v, i) => {
        const x = PAD + (n === 1 ? W - PAD : (i * (W - PAD)) / (n - 1));
        const y = H - PAD - (Math.min(v, max) / (max || 1)) * (H - 2 * PAD);
        return x.toFixed(1) + ',' + y.toFixed(1);
      });
      points += n;
      svg.append(mk('polyline', { class: 'line ' + (s.cls || ''), points: pts.join(' ') }));
    }
    svg.dataset.points = String(points);
  }

  // ---- detail --------------------------------------------------------------------------
  async function select(id) {
    selected = id;
    location.hash = id;
    $('detail').hidden = false;
    $('detail-error').textContent = '';
    $('recording-player').hidden = true;
    for (const tr of $('streams').querySelectorAll('tbody tr')) tr.classList.toggle('selected', tr.dataset.id === id);
    await refreshDetail(true);
    $('detail').scrollIntoView({ block: 'nearest' });
  }

  let playerFor = null;
  let recordingsAt = 0;

  async function refreshDetail(first) {
    const id = selected;
    let s;
    try {
      s = await api('GET', '/api/v1/streams/' + encodeURIComponent(id));
    } catch (e) {
      if (e.status === 404) { $('detail').hidden = true; selected = null; }
      return;
    }
    if (id !== selected) return;
    $('detail-title').textContent = s.title;
    const live = s.live || {};
    $('detail-meta').textContent = [s.app + '/' + s.name, s.state, live.protocol, resolution(s), s.viewer_count + ' viewers', s.privacy]
      .filter(Boolean).join(' · ');
    $('stop').disabled = s.state !== 'live';
    $('detail').dataset.state = s.state;
    $('detail').dataset.viewers = String(s.viewer_count);

    // Player: the embed page, with a fresh play token for a private stream.
    if (playerFor !== id) {
      playerFor = id;
      let src = '/embed/' + encodeURIComponent(id);
      playToken = '';
      if (s.privacy === 'private') {
        try {
          const t = await api('POST', '/api/v1/streams/' + encodeURIComponent(id) + '/play-token', {});
          playToken = t.token;
          src += '?token=' + encodeURIComponent(t.token);
        } catch (_) { /* shows the private message */ }
      }
      $('player').src = src;
      $('open-player').href = src.replace('/embed/', '/play/');
    }

    const h = await api('GET', '/api/v1/streams/' + encodeURIComponent(id) + '/health').catch(() => null);
    if (h) {
      $('health-score').textContent = h.score == null ? '(no score yet)' : h.score + ' / 100, ' + h.grade;
      chart($('chart-health'), [{ values: h.history.map((p) => p.score) }], 100, (m) => String(m));
      const tb = $('components').querySelector('tbody');
      tb.replaceChildren(...h.components.map((c) =>
        el('tr', {}, el('td', {}, c.name.replace(/_/g, ' ')), el('td', {}, '−' + c.cost.toFixed(1) + ' / ' + c.max_cost), el('td', { class: 'wrap' }, c.detail))));
    }
    const hist = samples.get(id) || [];
    const maxRate = Math.max(1000, ...hist.map((p) => Math.max(p.in, p.out)));
    chart($('chart-bitrate'), [
      { values: hist.map((p) => p.in) },
      { values: hist.map((p) => p.out), cls: 'out' },
    ], maxRate, (m) => (m / 1000).toFixed(0) + ' kbit/s');
    const maxViewers = Math.max(1, ...hist.map((p) => p.viewers));
    chart($('chart-viewers'), [{ values: hist.map((p) => p.viewers) }], maxViewers, (m) => String(m));

    const rs = await api('GET', '/api/v1/streams/' + encodeURIComponent(id) + '/restreams?limit=100').catch(() => null);
    if (rs) {
      $('restreams').querySelector('tbody').replaceChildren(...rs.data.map((r) =>
        el('tr', {},
          el('td', {}, r.name || r.platform),
          el('td', { class: 'wrap' }, r.url + ' ' + r.key_hint),
          el('td', {}, r.state + (r.last_error ? ' — ' + r.last_error : '')),
          el('td', {}, kbps(r.bitrate_bps)),
          el('td', {}, el('button', { type: 'button', class: 'secondary', onclick: () => removeRestream(r.id) }, 'Remove')))));
    }
    if (first || Date.now() - recordingsAt > 10000) {
      recordingsAt = Date.now();
      const recs = await api('GET', '/api/v1/recordings?stream_id=' + encodeURIComponent(id) + '&limit=20').catch(() => null);
      if (recs) {
        $('recordings').querySelector('tbody').replaceChildren(...recs.data.map((r) =>
          el('tr', {},
            el('td', {}, r.started_at),
            el('td', {}, r.status),
            el('td', {}, r.duration_seconds != null ? r.duration_seconds.toFixed(1) + ' s' : '—'),
            el('td', {}, bytes(r.size_bytes || 0)),
            el('td', {},
              el('button', { type: 'button', class: 'secondary', onclick: () => playRecording(r) }, 'Play'), ' ',
              el('button', { type: 'button', class: 'secondary', onclick: () => download(r) }, 'Download')))));
      }
    }
  }

  let playToken = '';

  async function playRecording(r) {
    // Same origin, whatever http.public_url says; a private stream's play token goes along.
    const v = $('recording-player');
    v.hidden = false;
    v.src = '/vod/' + encodeURIComponent(r.id) + '/index.m3u8' + (playToken ? '?token=' + encodeURIComponent(playToken) : '');
    v.play().catch(() => {});
  }

  async function download(r) {
    try {
      const resp = await fetch('/api/v1/recordings/' + encodeURIComponent(r.id) + '/download', { headers: { Authorization: 'Bearer ' + token } });
      if (!resp.ok) throw new Error('download answered ' + resp.status);
      const url = URL.createObjectURL(await resp.blob());
      const a = el('a', { href: url, download: r.id + '.mp4' });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      $('detail-error').textContent = String(e.message || e);
    }
  }

  async function removeRestream(rid) {
    try {
      await api('DELETE', '/api/v1/streams/' + encodeURIComponent(selected) + '/restreams/' + encodeURIComponent(rid));
      await refreshDetail();
    } catch (e) {
      $('detail-error').textContent = e.message;
    }
  }

  $('restream-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = e.target;
    const body = { platform: f.platform.value, key: f.key.value, name: f.name.value || undefined };
    if (f.url.value) body.url = f.url.value;
    try {
      await api('POST', '/api/v1/streams/' + encodeURIComponent(selected) + '/restreams', body);
      f.reset();
      $('detail-error').textContent = '';
      await refreshDetail();
    } catch (err) {
      $('detail-error').textContent = err.message;
    }
  });

  $('detail-close').addEventListener('click', () => {
    selected = null;
    playerFor = null;
    $('player').src = 'about:blank';
    $('detail').hidden = true;
    history.replaceState(null, '', location.pathname);
  });

  $('stop').addEventListener('click', async () => {
    try {
      await api('POST', '/api/v1/streams/' + encodeURIComponent(selected) + '/stop');
      await refresh();
    } catch (e) {
      $('detail-error').textContent = e.message;
    }
  });

  $('rotate').addEventListener('click', async () => {
    if (!confirm('Rotate the stream key? The current key stops working for new publishes.')) return;
    try {
      const r = await api('POST', '/api/v1/streams/' + encodeURIComponent(selected) + '/key');
      const s = await api('GET', '/api/v1/streams/' + encodeURIComponent(selected));
      showSecrets(s, r.stream_key);
    } catch (e) {
      $('detail-error').textContent = e.message;
    }
  });

  // ---- create --------------------------------------------------------------------------
  $('new-stream').addEventListener('click', () => {
    $('create').hidden = false;
    $('c-title').focus();
  });
  $('create-cancel').addEventListener('click', () => { $('create').hidden = true; });
  $('create-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = e.target;
    const body = { title: f.title.value, app: f.app.value || 'live', privacy: f.privacy.value, record: f.record.checked };
    if (f.name.value) body.name = f.name.value;
    try {
      const s = await api('POST', '/api/v1/streams', body);
      f.reset();
      $('create').hidden = true;
      $('create-error').textContent = '';
      showSecrets(s, s.stream_key);
      await refresh();
    } catch (err) {
      $('create-error').textContent = err.message;
    }
  });

  function showSecrets(s, key) {
    const wsUrl = s.ws_url + '?key=' + key;
    const rows = [
      ['Stream key', key],
      ['OBS: Server', s.rtmp_url],
      ['OBS: Stream key', key],
      ['ffmpeg', 'ffmpeg -re -i INPUT -c:v libx264 -preset veryfast -tune zerolatency -g 60 -c:a aac -f flv ' + s.rtmp_url + '/' + key],
      ['WHIP URL', s.whip_url],
      ['WHIP bearer token', key],
      ['ESP32 camera (WebSocket)', wsUrl],
      ['Play page', s.play_url],
      ['Embed', s.iframe],
    ];
    $('secrets-list').replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
    $('secrets').hidden = false;
    $('secrets-done').focus();
  }
  $('secrets-done').addEventListener('click', () => {
    $('secrets-list').replaceChildren();
    $('secrets').hidden = true;
  });

  if (token) {
    signIn(token).then((ok) => (ok ? enter() : signOut('')), () => signOut(''));
  }
  if (location.hash.length > 1 && token) select(decodeURIComponent(location.hash.slice(1)));
})();
