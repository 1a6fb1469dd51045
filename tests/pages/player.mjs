// Opens player pages and reports what a viewer would see (PARALLEL=1: all at once). Input: CASES, a JSON list of
// { name, url, kind } with kind "video" (wait for playing + frames), "mjpeg" (wait for
// playing, then two screenshots of the picture must differ), "frame" (the page holds the
// player in an iframe: report the iframe's player) or "message" (report the overlay text).
import fs from 'node:fs';
import path from 'node:path';
import { artifacts, browser, report, until } from './lib.mjs';

const cases = JSON.parse(process.env.CASES);
fs.mkdirSync(artifacts, { recursive: true });
const b = await browser();
// PARALLEL=1 opens every case at once (players that must all start the moment a stream
// appears); otherwise one after the other.
async function play(c) {
    const page = await b.newPage({ viewport: { width: 960, height: 600 } });
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    // A refused info request (401/403/404) is logged by the browser; that is the expected
    // answer for the message cases, not a page error.
    page.on('console', (m) => m.type() === 'error' && !(c.kind === 'message' && m.text().startsWith('Failed to load resource')) && errors.push(m.text() + (m.location() && m.location().url ? ' <' + m.location().url + '>' : '')));
    await page.goto(c.url);
    let target = page;
    if (c.kind === 'frame') {
      target = await until(() => page.frames().find((f) => f.url().includes('/embed/')), 10000);
      if (!target) { report({ name: c.name, error: 'no embed iframe' }); return; }
    }
    const state = () => target.evaluate(() => window.__player && { ...window.__player });
    let out = {};
    if (c.kind === 'comeback') {
      // Every state the player goes through while the test starts, ends and restarts the
      // publisher; done once it plays a second time.
      const states = [];
      const end = Date.now() + 90000;
      let plays = 0;
      while (Date.now() < end && plays < 2) {
        const s = await state();
        const st = s ? s.state : 'none';
        if (states[states.length - 1] !== st) {
          states.push(st);
          if (st === 'playing') plays++;
        }
        await new Promise((r) => setTimeout(r, 200));
      }
      out = { states, ...(await state()) };
    } else if (c.kind === 'message') {
      out = await until(async () => { const s = await state(); return s && s.message && s.state !== 'connecting' ? s : null; }, 15000);
    } else if (c.kind === 'mjpeg') {
      out = await until(async () => { const s = await state(); return s && s.state === 'playing' ? s : null; }, 30000) || await state();
      const img = target.locator('#mjpeg');
      const a = await img.screenshot();
      await new Promise((r) => setTimeout(r, 1500));
      const bshot = await img.screenshot();
      out.picture_changes = !a.equals(bshot);
      out.picture_bytes = a.length;
    } else {
      out = await until(async () => { const s = await state(); return s && s.state === 'playing' && s.frames > 30 ? s : null; }, 40000) || await state();
      // Let the latency readout settle.
      await new Promise((r) => setTimeout(r, 2500));
      out = { ...out, ...(await state()) };
      out.width = await target.evaluate(() => document.getElementById('video').videoWidth);
      out.timing = await target.evaluate(() => {
        const v = document.getElementById('video');
        const last = (r) => (r.length ? [r.start(0), r.end(r.length - 1)] : []);
        return { duration: String(v.duration), seekable: last(v.seekable), buffered: last(v.buffered), current: v.currentTime };
      });
    }
    out.text = await target.evaluate(() => document.getElementById('overlay').textContent + ' | ' + document.getElementById('path').textContent + ' | ' + document.getElementById('latency').textContent);
    await page.screenshot({ path: path.join(artifacts, 'player-' + c.name + '.png') });
    report({ name: c.name, errors, ...out });
    await page.close();
}
try {
  if (process.env.PARALLEL) await Promise.all(cases.map(play));
  else for (const c of cases) await play(c);
} finally {
  await b.close();
}
