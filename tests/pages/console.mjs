// Walks through the console as an operator would: a wrong token, sign in, create a stream,
// publish to it with ffmpeg using the settings the page shows, watch it go live, open two
// player pages, see the viewers, the health chart, stop it. Input: BASE, TOKEN. Reports one
// JSON line per step; screenshots go to target/test-artifacts/.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { artifacts, browser, report, until } from './lib.mjs';

const base = process.env.BASE;
const token = process.env.TOKEN;
// The page shows the configured public URLs; the test server listens on ephemeral ports.
const local = (url) => url.replace(/^rtmp:\/\/[^/]+/, process.env.RTMP_BASE).replace(/^http:\/\/[^/]+/, base);
fs.mkdirSync(artifacts, { recursive: true });
const shot = (page, name) => page.screenshot({ path: path.join(artifacts, 'console-' + name + '.png'), fullPage: true });
const b = await browser();
let ffmpeg = null;
try {
  const ctx = await b.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(base + '/');

  // Wrong tokens: a random one, and the right one with its last character changed.
  const refused = [];
  for (const wrong of ['not-a-token', token.slice(0, -1) + (token.endsWith('x') ? 'y' : 'x')]) {
    await page.fill('#token', wrong);
    await page.click('#signin-form button[type=submit]');
    await until(() => page.textContent('#signin-error').then((t) => t.length > 0), 5000);
    refused.push(await page.textContent('#signin-error'));
    await page.evaluate(() => { document.getElementById('signin-error').textContent = ''; });
  }
  report({ step: 'wrong_tokens', refused, app_visible: await page.isVisible('#app') });

  await page.fill('#token', token);
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#app', { state: 'visible', timeout: 10000 });
  report({ step: 'signed_in', url: page.url(), stored: await page.evaluate(() => sessionStorage.length) });

  await page.click('#new-stream');
  await page.fill('#c-title', 'Console test');
  await page.fill('#c-name', 'console1');
  await page.check('#c-record');
  await page.click('#create-form button[type=submit]');
  await page.waitForSelector('#secrets', { state: 'visible', timeout: 10000 });
  const settings = await page.evaluate(() => {
    const out = {};
    const dts = [...document.querySelectorAll('#secrets-list dt')];
    for (const dt of dts) out[dt.textContent] = dt.nextElementSibling.textContent;
    return out;
  });
  await shot(page, 'created');
  report({ step: 'created', labels: Object.keys(settings), ffmpeg: settings['ffmpeg'] });
  await page.click('#secrets-done');
  report({ step: 'secrets_hidden', hidden: await page.isHidden('#secrets'), list: await page.textContent('#secrets-list') });

  // Publish exactly where the page said (baseline H.264, so players take WebRTC).
  const url = local(settings['OBS: Server']) + '/' + settings['OBS: Stream key'];
  ffmpeg = spawn('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-nostdin', '-re',
    '-f', 'lavfi', '-i', 'testsrc2=size=640x360:rate=30', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
    '-t', '120', '-c:v', 'libx264', '-preset', 'veryfast', '-tune', 'zerolatency', '-profile:v', 'baseline',
    '-g', '30', '-pix_fmt', 'yuv420p', '-c:a', 'aac', '-f', 'flv', url], { stdio: 'ignore' });
  const row = page.locator('#streams tbody tr', { hasText: 'Console test' });
  const live = await until(() => row.locator('td.state-live').count(), 20000);
  report({ step: 'live', live: !!live, row: await row.innerText() });

  const viewers = [];
  for (let i = 0; i < 2; i++) {
    const p = await ctx.newPage();
    await p.goto(local(settings['Play page']));
    viewers.push(p);
  }
  const playing = await until(async () => {
    const states = await Promise.all(viewers.map((p) => p.evaluate(() => window.__player && window.__player.state)));
    return states.every((s) => s === 'playing') ? states : null;
  }, 30000);
  const count = await until(async () => {
    const n = Number(await row.locator('td.viewers').textContent());
    return n >= 2 ? n : null;
  }, 20000);
  await page.bringToFront();
  await shot(page, 'viewers');
  report({ step: 'viewers', players_playing: !!playing, viewer_count: count, paths: await Promise.all(viewers.map((p) => p.evaluate(() => window.__player.path))) });

  await row.click();
  await page.waitForSelector('#detail', { state: 'visible', timeout: 10000 });
  const points = await until(async () => {
    const n = Number(await page.getAttribute('#chart-health', 'data-points'));
    return n >= 2 ? n : null;
  }, 40000);
  const components = await page.locator('#components tbody tr').count();
  const bitratePoints = Number(await page.getAttribute('#chart-bitrate', 'data-points'));
  await shot(page, 'detail');
  report({ step: 'detail', health_points: points, components, bitrate_points: bitratePoints, score: await page.textContent('#health-score') });

  // A restream destination: added, shown with its state, removed.
  await page.selectOption('#r-platform', 'custom');
  await page.fill('#r-url', 'rtmp://127.0.0.1:9/live');
  await page.fill('#r-key', 'console-secret-key');
  await page.fill('#r-name', 'Backup');
  await page.click('#restream-form button[type=submit]');
  const restream = await until(async () => {
    const t = await page.locator('#restreams tbody tr', { hasText: 'Backup' }).innerText();
    return t && /starting|retrying|active|failed|idle/.test(t) ? t : null;
  }, 10000);
  const shownKey = (await page.textContent('#restreams')).includes('console-secret-key');
  await page.locator('#restreams tbody tr', { hasText: 'Backup' }).getByRole('button', { name: 'Remove' }).click();
  const removed = await until(async () => (await page.locator('#restreams tbody tr').count()) === 0, 10000);
  report({ step: 'restream', row: restream, key_shown: shownKey, removed: !!removed });

  await page.click('#stop');
  const stopped = await until(async () => ((await row.locator('td.state-live').count()) === 0 ? await row.innerText() : null), 15000);
  await shot(page, 'stopped');
  report({ step: 'stopped', stopped: !!stopped, row: stopped });

  // The recording of the session: listed, downloadable, playable.
  const rec = page.locator('#recordings tbody tr', { hasText: 'ready' });
  const listed = await until(async () => {
    if ((await rec.count()) > 0) return true;
    await page.click('#detail-close');
    await row.click();
    return false;
  }, 30000, 2000);
  let downloaded = 0;
  let recordingFrames = 0;
  if (listed) {
    const [download] = await Promise.all([
      page.waitForEvent('download', { timeout: 15000 }),
      rec.first().getByRole('button', { name: 'Download' }).click(),
    ]);
    downloaded = fs.statSync(await download.path()).size;
    await rec.first().getByRole('button', { name: 'Play' }).click();
    recordingFrames = await until(async () => {
      const t = await page.evaluate(() => document.getElementById('recording-player').currentTime);
      return t > 1 ? t : null;
    }, 20000);
  }
  report({ step: 'recording', listed: !!listed, downloaded, played_seconds: recordingFrames || 0 });

  // Rotate the key: confirmed, the new key shown once.
  page.once('dialog', (d) => d.accept());
  await page.click('#rotate');
  await page.waitForSelector('#secrets', { state: 'visible', timeout: 10000 });
  const rotated = await page.evaluate(() => {
    const dt = [...document.querySelectorAll('#secrets-list dt')].find((d) => d.textContent === 'Stream key');
    return dt ? dt.nextElementSibling.textContent : '';
  });
  await page.click('#secrets-done');
  report({ step: 'rotated', new_key_differs: rotated.startsWith('sk_') && rotated !== settings['Stream key'] });

  // Keyboard: a focused row opens with Enter. Phone width: nothing wider than the screen.
  await page.click('#detail-close');
  await row.focus();
  await page.keyboard.press('Enter');
  const keyboard = await until(() => page.isVisible('#detail'), 5000);
  await page.setViewportSize({ width: 375, height: 740 });
  await new Promise((r) => setTimeout(r, 500));
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  const wide = await page.evaluate(() => [...document.querySelectorAll('body *')]
    .filter((e) => e.scrollWidth > window.innerWidth || e.getBoundingClientRect().right > window.innerWidth + 1)
    .slice(0, 12).map((e) => e.tagName + '#' + e.id + '.' + e.className + ':' + e.scrollWidth + '/' + Math.round(e.getBoundingClientRect().right)));
  await shot(page, 'phone');
  report({ step: 'access', keyboard_opens_detail: !!keyboard, phone_overflow_px: overflow, too_wide: wide, errors });
} finally {
  if (ffmpeg) ffmpeg.kill('SIGKILL');
  await b.close();
}
