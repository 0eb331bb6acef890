// A broadcast packaged as HLS, in local mode (`hls = true` in the rooms file): the gateway
// packages the stage with ffmpeg and serves `/hls/concert/index.m3u8`.
//
// The presenter's camera is a canvas that shows the time it was drawn as 32 black and
// white cells, so a viewer reading the cells off its own video knows how old the frame
// is (one machine, one clock): the glass-to-glass delay, over WebRTC and over HLS, from
// the same frames at the same moments.
//
// /watch falls back to HLS by itself, visibly: a viewer whose WebRTC cannot connect (its
// page drops every ICE candidate) ends up on HLS after the page's timeout; one beyond the
// broadcast's `maxWebrtcViewers` is sent there by the gateway (`use_hls`); one asks for
// it (`&hls=1`). ffprobe (not Tutti's code) reads the playlist as H.264 and AAC. While the
// stage is recorded, its WebRTC viewers see the recording badge.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startGateway, launch, waitFor, repo, binary } from './lib.mjs';

const run = promisify(execFile);

let gateway;
let browser;
let dir;
const SECRET = 'hls-test-jwt-secret-0123456789abcdef0123';

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tutti-hls-'));
  const rooms = path.join(dir, 'rooms.toml');
  fs.writeFileSync(rooms, [
    '[[broadcasts]]',
    'name = "concert"',
    'password = "stage-door"',
    'hls = true',
    'maxWebrtcViewers = 1',
    '',
  ].join('\n'));
  gateway = await startGateway([
    '--shards', '2', '--rooms', rooms, '--hls-dir', path.join(dir, 'hls'),
    '--record-dir', path.join(dir, 'recordings'), '--jwt-secret', SECRET,
  ]);
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  if (gateway) await gateway.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/**
 * Replaces the camera and microphone with a canvas showing the time (its low 32 bits of
 * milliseconds, one cell per bit, 8 × 4 cells over 640 × 480) and a 440 Hz tone.
 */
function clockCamera() {
  const canvas = document.createElement('canvas');
  canvas.width = 640;
  canvas.height = 480;
  const context = canvas.getContext('2d');
  const draw = () => {
    const now = Date.now() % 2 ** 32;
    for (let bit = 0; bit < 32; bit += 1) {
      context.fillStyle = Math.floor(now / 2 ** bit) % 2 ? '#ffffff' : '#000000';
      context.fillRect((bit % 8) * 80, Math.floor(bit / 8) * 120, 80, 120);
    }
  };
  draw();
  setInterval(draw, 10);
  const video = canvas.captureStream(30).getVideoTracks()[0];
  let audio = null;
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    const tracks = [];
    if (constraints.video) tracks.push(video.clone());
    if (constraints.audio) {
      if (!audio) {
        const sound = new AudioContext();
        const tone = sound.createOscillator();
        const out = sound.createMediaStreamDestination();
        tone.frequency.value = 440;
        tone.connect(out);
        tone.start();
        audio = out.stream.getAudioTracks()[0];
      }
      tracks.push(audio.clone());
    }
    return new MediaStream(tracks);
  };
}

/** A viewer's page whose WebRTC cannot connect: every ICE candidate of the edge dropped. */
function noIceCandidates() {
  const Original = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Original {
    setRemoteDescription(description) {
      const sdp = description?.sdp?.split('\r\n').filter((l) => !l.startsWith('a=candidate')).join('\r\n');
      return super.setRemoteDescription(sdp ? { type: description.type, sdp } : description);
    }

    addIceCandidate() {
      return Promise.resolve();
    }
  };
}

async function open(url, init) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (err) => console.error(`[page error] ${err.message}`));
  if (init) await page.addInitScript(init);
  await page.goto(url);
  return page;
}

/**
 * How old the frame `page` shows is, in ms: the time its cells spell against the page's
 * clock. `hls` reads the HLS player's video, else the first WebRTC tile's. The frame may
 * be scaled and padded (HLS is 1280 × 720 with the 4:3 picture in its middle).
 */
function frameAge(page, hls) {
  return page.evaluate((fromHls) => {
    const video = fromHls ? window.tutti.state.hlsVideo : document.querySelector('#grid video');
    if (!video || !video.videoWidth || video.readyState < 2) return null;
    const [vw, vh] = [video.videoWidth, video.videoHeight];
    const canvas = document.createElement('canvas');
    canvas.width = vw;
    canvas.height = vh;
    const context = canvas.getContext('2d', { willReadFrequently: true });
    context.drawImage(video, 0, 0, vw, vh);
    const contentWidth = Math.min(vw, (vh * 4) / 3);
    const contentHeight = (contentWidth * 3) / 4;
    const [x0, y0] = [(vw - contentWidth) / 2, (vh - contentHeight) / 2];
    let value = 0;
    for (let bit = 0; bit < 32; bit += 1) {
      const cx = x0 + ((bit % 8) + 0.5) * (contentWidth / 8);
      const cy = y0 + (Math.floor(bit / 8) + 0.5) * (contentHeight / 4);
      const { data } = context.getImageData(Math.round(cx) - 3, Math.round(cy) - 3, 6, 6);
      let sum = 0;
      for (let i = 0; i < data.length; i += 4) sum += data[i] + data[i + 1] + data[i + 2];
      if (sum / (data.length / 4) / 3 > 128) value += 2 ** bit;
    }
    const age = ((Date.now() % 2 ** 32) - value + 2 ** 32) % 2 ** 32;
    return age < 60_000 ? age : null;
  }, hls);
}

/** The median of the frame ages `page` shows over `samples` reads 200 ms apart. */
async function medianAge(pages, samples = 25) {
  const ages = pages.map(() => []);
  for (let i = 0; i < samples; i += 1) {
    const read = await Promise.all(pages.map(({ page, hls }) => frameAge(page, hls)));
    read.forEach((age, index) => { if (age !== null) ages[index].push(age); });
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return ages.map((list) => {
    const sorted = [...list].sort((a, b) => a - b);
    return { median: sorted[Math.floor(sorted.length / 2)], count: sorted.length, min: sorted[0], max: sorted.at(-1) };
  });
}

async function viewers() {
  return (await (await fetch(`${gateway.url}/v1/broadcasts/concert`)).json()).viewers;
}

/** Waits until an HLS page plays: its position and frames advance, its cells readable. */
async function waitForHlsPlaying(page) {
  const first = await waitFor('the HLS player to show frames', () => page.evaluate(() => window.tutti.hlsStats()),
    (s) => s && s.frames > 0 && s.currentTime > 0, 60_000);
  return waitFor('the HLS player to keep playing', () => page.evaluate(() => window.tutti.hlsStats()),
    (s) => s && s.currentTime > first.currentTime + 1 && s.frames > first.frames, 30_000);
}

test('the vendored hls.js is the npm package the tests install', () => {
  const vendored = fs.readFileSync(path.join(repo, 'signaling', 'web', 'vendor', 'hls.light.min.js'));
  const installed = fs.readFileSync(path.join(repo, 'tests', 'browser', 'node_modules', 'hls.js', 'dist', 'hls.light.min.js'));
  assert.ok(vendored.equals(installed), 'signaling/web/vendor/hls.light.min.js differs from hls.js in package.json');
});

test('a broadcast goes out as HLS too, and /watch falls back to it where WebRTC cannot serve', async () => {
  // A viewer who chose HLS before the stage is on the air: its player waits for the
  // playlist and plays once there is one.
  const chosen = await open(`${gateway.url}/watch?broadcast=concert&hls=1`);
  // The page asks the gateway whether the broadcast has HLS before it switches.
  await waitFor('the chosen viewer on HLS', () => chosen.evaluate(() => window.tutti.mode()), (m) => m === 'hls');
  const presenter = await open(`${gateway.url}/?room=concert&name=Clock&password=stage-door`, clockCamera);

  // The playlist: H.264 and AAC, as ffprobe reads it.
  const playlist = `${gateway.url}/hls/concert/index.m3u8`;
  await waitFor('the playlist', () => fetch(playlist).then((r) => r.status), (s) => s === 200, 60_000);
  const response = await fetch(playlist);
  assert.equal(response.headers.get('content-type'), 'application/vnd.apple.mpegurl');
  assert.equal(response.headers.get('cache-control'), 'public, max-age=1');
  const { stdout } = await run('ffprobe', ['-v', 'error', '-show_entries', 'stream=codec_name,codec_type,width,height', '-of', 'json', playlist]);
  const streams = JSON.parse(stdout).streams;
  console.log(`hls: ffprobe reads ${JSON.stringify(streams)}`);
  assert.ok(streams.some((s) => s.codec_type === 'video' && s.codec_name === 'h264' && s.width === 1280 && s.height === 720));
  assert.ok(streams.some((s) => s.codec_type === 'audio' && s.codec_name === 'aac'));
  assert.equal((await fetch(`${gateway.url}/hls/concert/.input.sdp`)).status, 404, 'only the playlist and segments are served');
  assert.equal((await fetch(`${gateway.url}/hls/nowhere/index.m3u8`)).status, 404);

  // A viewer whose WebRTC cannot connect is moved to HLS, and told.
  const stranded = await open(`${gateway.url}/watch?broadcast=concert`, noIceCandidates);
  await waitFor('the stranded viewer to fall back to HLS', () => stranded.evaluate(() => window.tutti.mode()), (m) => m === 'hls', 30_000);
  assert.match(await stranded.textContent('#mode'), /HLS/);
  assert.match(await stranded.textContent('#banner-text'), /cannot reach your network/);
  await waitForHlsPlaying(stranded);
  await stranded.context().close();

  // A WebRTC viewer and one who chose HLS watch the same frames: how old is each?
  await waitFor('the stranded seat to be given up', viewers, (n) => n === 0, 30_000);
  const live = await open(`${gateway.url}/watch?broadcast=concert`);
  await waitFor('the WebRTC viewer to show the stage', () => frameAge(live, false), (age) => age !== null, 30_000);
  assert.equal(await live.evaluate(() => window.tutti.mode()), 'webrtc');
  const playing = await waitForHlsPlaying(chosen);
  assert.equal(await chosen.textContent('#banner-text'), '', 'chosen, not a fallback');
  // hls.js settles on its live position over its first segments: four more seconds played.
  await waitFor('the HLS player settled', () => chosen.evaluate(() => window.tutti.hlsStats()),
    (s) => s && s.currentTime > playing.currentTime + 4, 30_000);
  const [webrtc, hls] = await medianAge([{ page: live, hls: false }, { page: chosen, hls: true }]);
  const hlsLatency = await chosen.evaluate(() => window.tutti.hlsStats().latency);
  console.log(`glass-to-glass: WebRTC median ${webrtc.median} ms (${webrtc.min}-${webrtc.max}, ${webrtc.count} reads), HLS median ${hls.median} ms (${hls.min}-${hls.max}, ${hls.count} reads), ${(hls.median / webrtc.median).toFixed(1)}x; hls.js's own estimate ${hlsLatency?.toFixed(2)} s`);
  assert.ok(webrtc.count >= 10 && hls.count >= 10, 'both frames readable');
  assert.ok(hls.median > webrtc.median, 'HLS is behind WebRTC');

  // Recording the stage: the WebRTC viewer, seated on an edge, is told, and told again
  // when it stops.
  const { stdout: token } = await run(binary('tutti-gateway'), [
    'token', '--room', 'concert', '--name', 'Producer', '--record', '--jwt-secret', SECRET,
  ]);
  const api = `${gateway.url}/v1/rooms/concert/recording`;
  const auth = { authorization: `Bearer ${token.trim()}` };
  const started = await fetch(api, { method: 'POST', headers: auth });
  assert.equal(started.status, 201, await started.text());
  const cascade = await (await fetch(`${gateway.url}/v1/broadcasts/concert`)).json();
  console.log(`recorded stage: origin ${cascade.origin}, edges ${cascade.edges.map((e) => `${e.shard} (${e.viewers} viewers)`).join(', ')}`);
  await waitFor('the viewer to see the stage recorded', () => live.evaluate(() => window.tutti.recordingShown()), (shown) => shown === true);
  assert.equal((await fetch(api, { method: 'DELETE', headers: auth })).status, 200);
  await waitFor('the viewer to see the recording stop', () => live.evaluate(() => window.tutti.recordingShown()), (shown) => shown === false);

  // Past maxWebrtcViewers (1), a newcomer is sent to HLS by the gateway.
  await waitFor('the WebRTC viewer counted', viewers, (n) => n >= 1, 30_000);
  const late = await open(`${gateway.url}/watch?broadcast=concert`);
  await waitFor('the late viewer on HLS', () => late.evaluate(() => window.tutti.mode()), (m) => m === 'hls', 30_000);
  assert.match(await late.textContent('#banner-text'), /audience is full/);
  await waitForHlsPlaying(late);
  for (const page of [late, chosen, live, presenter]) await page.context().close();
});
