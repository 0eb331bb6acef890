// WHIP from a browser: a page on another origin publishes its camera and microphone to a
// broadcast with nothing but `fetch` and RTCPeerConnection (RFC 9725: POST of the offer,
// PATCH of trickled candidates, an ICE restart by PATCH, DELETE), across CORS. A viewer on
// /watch sees and hears it, keeps seeing it after the restart, and sees it go after DELETE.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startGateway, launch, openPage, waitFor, waitForPlayingVideo, waitForAudio, remoteVideo, binary,
} from './lib.mjs';

const run = promisify(execFile);
const SECRET = 'whip-test-jwt-secret-0123456789abcdef0123';

let gateway;
let browser;
let dir;
let elsewhere;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tutti-whip-'));
  const rooms = path.join(dir, 'rooms.toml');
  fs.writeFileSync(rooms, '[[broadcasts]]\nname = "concert"\npassword = "stage-door"\n');
  gateway = await startGateway(['--shards', '2', '--rooms', rooms, '--jwt-secret', SECRET]);
  // The publishing page's own origin: another port, so every WHIP request is cross-origin.
  elsewhere = http.createServer((request, response) => {
    response.writeHead(200, { 'content-type': 'text/html' });
    response.end('<!doctype html><title>encoder</title><p>WHIP encoder</p>');
  });
  await new Promise((resolve) => elsewhere.listen(0, '127.0.0.1', resolve));
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  if (gateway) await gateway.stop();
  if (elsewhere) elsewhere.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/**
 * Runs in the encoder page: publishes camera and microphone to `endpoint` by WHIP, sending
 * the offer at once and the candidates as they come (PATCH, If-Match: the ETag). Keeps
 * what it needs for the restart and DELETE in `window.whip`.
 */
async function publish({ endpoint, token }) {
  const media = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
  const pc = new RTCPeerConnection();
  for (const track of media.getTracks()) pc.addTransceiver(track, { direction: 'sendonly' });
  const whip = { pc, patches: [], pending: [], location: null, etag: null, answer: null };
  window.whip = whip;
  const fragmentOf = (candidates, end) => {
    const local = pc.localDescription.sdp.split('\r\n');
    const ufrag = local.find((l) => l.startsWith('a=ice-ufrag:'));
    const pwd = local.find((l) => l.startsWith('a=ice-pwd:'));
    const mLine = local.find((l) => l.startsWith('m='));
    const mid = local.find((l) => l.startsWith('a=mid:'));
    const lines = [ufrag, pwd, mLine, mid, ...candidates.map((c) => `a=${c.candidate}`)];
    if (end) lines.push('a=end-of-candidates');
    return `${lines.join('\r\n')}\r\n`;
  };
  whip.fragmentOf = fragmentOf;
  const trickle = async (candidates, end) => {
    const response = await fetch(whip.location, {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/trickle-ice-sdpfrag', 'If-Match': whip.etag },
      body: fragmentOf(candidates, end),
    });
    whip.patches.push(response.status);
  };
  pc.onicecandidate = ({ candidate }) => {
    // Only the first section's candidates: the others are bundled on it.
    if (candidate && candidate.sdpMLineIndex !== 0) return;
    const batch = candidate ? [candidate] : [];
    if (whip.location) trickle(batch, !candidate);
    else whip.pending.push(...batch);
  };
  await pc.setLocalDescription(await pc.createOffer());
  const response = await fetch(endpoint, {
    method: 'POST',
    headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` },
    body: pc.localDescription.sdp,
  });
  const body = await response.text();
  if (response.status !== 201) return { status: response.status, body };
  whip.location = new URL(response.headers.get('Location'), endpoint).href;
  whip.etag = response.headers.get('ETag');
  whip.answer = body;
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
  if (whip.pending.length) await trickle(whip.pending, pc.iceGatheringState === 'complete');
  return {
    status: response.status,
    location: whip.location,
    etag: whip.etag,
    link: response.headers.get('Link'),
    acceptPatch: response.headers.get('Accept-Patch'),
  };
}

/**
 * Runs in the encoder page: restarts ICE as RFC 9725 §4.3.2 says (PATCH of the new
 * credentials with If-Match: *) and applies the answering fragment to the old answer.
 */
async function restartIce() {
  const { whip } = window;
  const { pc } = whip;
  pc.onicecandidate = null;
  await pc.setLocalDescription(await pc.createOffer({ iceRestart: true }));
  const response = await fetch(whip.location, {
    method: 'PATCH',
    headers: { 'Content-Type': 'application/trickle-ice-sdpfrag', 'If-Match': '*' },
    body: whip.fragmentOf([], false),
  });
  const fragment = await response.text();
  if (response.status !== 200) return { status: response.status, fragment };
  const lines = fragment.split('\r\n');
  const ufrag = lines.find((l) => l.startsWith('a=ice-ufrag:'));
  const pwd = lines.find((l) => l.startsWith('a=ice-pwd:'));
  const candidates = lines.filter((l) => l.startsWith('a=candidate:'));
  // The old answer with the new credentials, and the new candidates in its first section
  // (the others are bundled on it): nothing else changed.
  const oldUfrag = whip.answer.split('\r\n').find((l) => l.startsWith('a=ice-ufrag:'));
  const out = [];
  let placed = false;
  for (const line of whip.answer.split('\r\n')) {
    if (line.startsWith('a=candidate:') || line === 'a=end-of-candidates') continue;
    out.push(line.startsWith('a=ice-ufrag:') ? ufrag : line.startsWith('a=ice-pwd:') ? pwd : line);
    if (!placed && line.startsWith('a=mid:')) {
      out.push(...candidates);
      placed = true;
    }
  }
  const answer = out.join('\r\n');
  await pc.setRemoteDescription({ type: 'answer', sdp: answer });
  const oldEtag = whip.etag;
  whip.etag = response.headers.get('ETag');
  whip.answer = answer;
  return { status: response.status, newCredentials: ufrag !== oldUfrag, newEtag: whip.etag !== oldEtag };
}

/** The encoder page's ICE state and local ufrag in use, and frames it sent. */
function sending() {
  return (async () => {
    const { pc } = window.whip;
    let frames = 0;
    let ufrag = null;
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') frames += s.framesSent || 0;
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        const pair = stats.get(s.selectedCandidatePairId);
        const local = pair && stats.get(pair.localCandidateId);
        ufrag = local?.usernameFragment ?? null;
      }
    });
    return { state: pc.connectionState, frames, ufrag };
  })();
}

test('a page publishes to a broadcast by WHIP with fetch, restarts ICE and leaves by DELETE', async () => {
  const { stdout } = await run(binary('tutti-gateway'), [
    'token', '--room', 'concert', '--name', 'Pianist', '--jwt-secret', SECRET,
  ]);
  const token = stdout.trim();
  const encoder = await openPage(browser, `http://127.0.0.1:${elsewhere.address().port}/`);
  const published = await encoder.evaluate(publish, { endpoint: `${gateway.url}/v1/whip/concert`, token });
  console.log(`WHIP: ${JSON.stringify(published)}`);
  assert.equal(published.status, 201, published.body);
  assert.match(published.location, /\/v1\/whip\/concert\/[A-Za-z0-9]+$/);
  assert.ok(published.etag, 'an ETag the page can read across origins');
  assert.equal(published.acceptPatch, 'application/trickle-ice-sdpfrag');
  await waitFor('the encoder to connect', () => encoder.evaluate(sending), (s) => s.state === 'connected' && s.frames > 0);
  const patches = await waitFor('trickled candidates', () => encoder.evaluate(() => window.whip.patches), (p) => p.length > 0);
  assert.ok(patches.every((status) => status === 204), `PATCH statuses ${patches}`);

  const viewer = await openPage(browser, `${gateway.url}/watch?broadcast=concert`);
  await waitForPlayingVideo(viewer, 'Pianist', 40_000);
  await waitForAudio(viewer, 'Pianist', 40_000);

  const before = await encoder.evaluate(sending);
  const restarted = await encoder.evaluate(restartIce);
  console.log(`ICE restart: ${JSON.stringify(restarted)}`);
  assert.equal(restarted.status, 200, restarted.fragment);
  assert.ok(restarted.newCredentials && restarted.newEtag, JSON.stringify(restarted));
  const after = await waitFor(
    'the encoder to send over its new ICE session',
    () => encoder.evaluate(sending),
    (s) => s.state === 'connected' && s.ufrag && s.ufrag !== before.ufrag && s.frames > before.frames,
  );
  console.log(`ICE ufrag ${before.ufrag} -> ${after.ufrag}; frames sent ${before.frames} -> ${after.frames}`);
  await waitForPlayingVideo(viewer, 'Pianist', 40_000);

  const deleted = await encoder.evaluate(async () => (await fetch(window.whip.location, { method: 'DELETE' })).status);
  assert.equal(deleted, 200);
  await waitFor('the viewer to see the presenter go', () => remoteVideo(viewer, 'Pianist'), (v) => v === null);
  const again = await encoder.evaluate(async () => (await fetch(window.whip.location, { method: 'DELETE' })).status);
  assert.equal(again, 404);
});
