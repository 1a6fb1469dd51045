// Shared helpers of the page tests: Debian's chromium driven by playwright-core (npm).
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const { chromium } = require(path.join(root, 'target/npm/node_modules/playwright-core'));

export const artifacts = path.join(root, 'target/test-artifacts');

export async function browser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-quic',
      '--autoplay-policy=no-user-gesture-required',
      '--allow-loopback-in-peer-connection',
      '--disable-features=WebRtcHideLocalIpsWithMdns',
    ],
  });
}

// Polls `f` until it returns a truthy value or `ms` pass; returns the last value.
export async function until(f, ms, every = 250) {
  const end = Date.now() + ms;
  let v;
  for (;;) {
    try { v = await f(); } catch (_) { v = undefined; }
    if (v || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, every));
  }
}

export function report(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}
