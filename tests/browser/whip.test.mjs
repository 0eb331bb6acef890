// WHIP and WHEP from a browser: a page on another origin publishes its camera (simulcast)
// and microphone to a broadcast with nothing but `fetch` and RTCPeerConnection (RFC 9725:
// POST of the offer, PATCH of trickled candidates, an ICE restart by PATCH, DELETE), across
// CORS. A viewer on /watch sees and hears it, two WHEP players on another origin decode the
// full and the lowest layer, the /watch viewer keeps seeing it after the restart, and sees
// it go after DELETE. Then the reference WHIP and WHEP clients of the WHEP draft's author
// (npm `whip-whep`, with one fix of theirs, below) publish and play through Tutti, ICE
// restarts, the server-sent events and the layer selection extensions included.

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
  fs.writeFileSync(rooms, '[[broadcasts]]\nname = "concert"\npassword = "stage-door"\n\n[[rooms]]\nname = "studio"\npassword = "quiet"\n');
  gateway = await startGateway(['--shards', '2', '--rooms', rooms, '--jwt-secret', SECRET]);
  // The publishing page's own origin: another port, so every WHIP request is cross-origin.
  // It also serves the draft author's reference clients (npm `whip-whep` 1.2.0) with one
  // fix: after an ICE restart they put the answer's candidates back with
  // `candidates.join()`, which separates them with commas and breaks the description as
  // soon as there are two (Tutti answers with UDP and TCP candidates); the clients derived
  // from it use `join("")`, and so do these.
  const reference = path.join(path.dirname(new URL(import.meta.url).pathname), 'node_modules', 'whip-whep');
  const scripts = {};
  for (const name of ['whip.js', 'whep.js']) {
    const source = fs.readFileSync(path.join(reference, name), 'utf8');
    const fixed = source.replace('candidates.join())', 'candidates.join(""))');
    assert.notEqual(fixed, source, `${name}: the candidate join to fix is where it was`);
    scripts[`/whip-whep/${name}`] = fixed;
  }
  elsewhere = http.createServer((request, response) => {
    const script = scripts[request.url];
    if (script) {
      response.writeHead(200, { 'content-type': 'text/javascript' });
      response.end(script);
      return;
    }
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
  pc.addTransceiver(media.getAudioTracks()[0], { direction: 'sendonly' });
  // Simulcast, as the stage asks of its presenters: WHEP viewers choose a layer.
  pc.addTransceiver(media.getVideoTracks()[0], {
    direction: 'sendonly',
    sendEncodings: [
      { rid: 'q', scaleResolutionDownBy: 4 }, { rid: 'h', scaleResolutionDownBy: 2 }, { rid: 'f' },
    ],
  });
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

/**
 * Runs in a player page: watches `endpoint` by WHEP with one recvonly audio and one
 * recvonly video section, its candidates in the offer.
 */
async function play({ endpoint, token }) {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.addTransceiver('video', { direction: 'recvonly' });
  const video = document.createElement('video');
  video.autoplay = true;
  document.body.append(video);
  const stream = new MediaStream();
  pc.ontrack = ({ track }) => {
    stream.addTrack(track);
    video.srcObject = stream;
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && resolve();
  });
  const headers = { 'Content-Type': 'application/sdp' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(endpoint, { method: 'POST', headers, body: pc.localDescription.sdp });
  const body = await response.text();
  if (response.status !== 201) return { status: response.status, body };
  window.whep = { pc, location: new URL(response.headers.get('Location'), endpoint).href };
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
  return { status: response.status, location: window.whep.location };
}

/** What a WHEP player decoded: video frames and their width, audio energy. */
function played() {
  return (async () => {
    const out = { frames: 0, width: 0, audioEnergy: 0, audioPackets: 0 };
    (await window.whep.pc.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      if (s.kind === 'video') {
        out.frames += s.framesDecoded || 0;
        out.width = Math.max(out.width, s.frameWidth || 0);
      } else {
        out.audioEnergy += s.totalAudioEnergy || 0;
        out.audioPackets += s.packetsReceived || 0;
      }
    });
    return out;
  })();
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

async function mint(room, name, extra = []) {
  const { stdout } = await run(binary('tutti-gateway'), [
    'token', '--room', room, '--name', name, '--jwt-secret', SECRET, ...extra,
  ]);
  return stdout.trim();
}

test('a page publishes by WHIP with fetch, players watch by WHEP, ICE restarts, DELETE ends it', async () => {
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

  // A player on another origin watches by WHEP, seated on an edge as /watch is, and gets
  // what the /watch viewer gets.
  const player = await openPage(browser, `http://127.0.0.1:${elsewhere.address().port}/`);
  const started = await player.evaluate(play, { endpoint: `${gateway.url}/v1/whep/concert` });
  assert.equal(started.status, 201, started.body);
  assert.match(started.location, /\/v1\/whep\/concert\/[A-Za-z0-9]+$/);
  const watched = await waitForPlayingVideo(viewer, 'Pianist', 40_000);
  const playing = await waitFor(
    'the WHEP player to decode the picture /watch shows and hear the presenter',
    () => player.evaluate(played),
    (p) => p.frames > 30 && p.width >= watched.width && p.audioEnergy > 0,
    40_000,
  );
  console.log(`WHEP player: ${JSON.stringify(playing)}; /watch shows ${watched.width} px`);

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

test('WHEP players of a room choose their simulcast layer with ?quality= or the layer extension', async () => {
  const encoder = await openPage(browser, `http://127.0.0.1:${elsewhere.address().port}/`);
  const published = await encoder.evaluate(publish, {
    endpoint: `${gateway.url}/v1/whip/studio`, token: await mint('studio', 'Singer'),
  });
  assert.equal(published.status, 201, published.body);
  const players = {};
  for (const quality of ['high', 'low']) {
    const page = await openPage(browser, `http://127.0.0.1:${elsewhere.address().port}/`);
    const started = await page.evaluate(play, {
      endpoint: `${gateway.url}/v1/whep/studio?quality=${quality}`,
      token: await mint('studio', `Listener-${quality}`, ['--no-publish']),
    });
    assert.equal(started.status, 201, started.body);
    players[quality] = page;
  }
  const low = await waitFor(
    'the low player to decode the quarter layer',
    () => players.low.evaluate(played),
    (p) => p.frames > 30 && p.width === 160 && p.audioEnergy > 0,
    40_000,
  );
  const high = await waitFor(
    'the high player to decode a wider layer',
    () => players.high.evaluate(played),
    (p) => p.frames > 30 && p.width >= 320 && p.audioEnergy > 0,
    40_000,
  );
  console.log(`WHEP in a room: high ${JSON.stringify(high)}, low ${JSON.stringify(low)}`);
  assert.ok(high.width > low.width, 'the high player gets a wider layer than the low one');

  // The reference player learns the layers from its event stream and chooses one with the
  // layer selection extension, then leaves the choice to the server again.
  const reference = await openPage(browser, `http://127.0.0.1:${elsewhere.address().port}/`);
  const started = await reference.evaluate(referencePlay, {
    endpoint: `${gateway.url}/v1/whep/studio`, token: await mint('studio', 'Reference', ['--no-publish']),
  });
  assert.ok(started.layer, 'the client found the layer selection Link');
  const told = await waitFor('the layers event', () => reference.evaluate(referenceEvents), (e) => e.events.includes('layers'));
  const layers = JSON.parse(told.all.find((e) => e.name === 'layers').data);
  console.log(`reference WHEP layers event: ${JSON.stringify(layers)}`);
  assert.deepEqual(layers, { 1: [{ rid: 'f' }, { rid: 'h' }, { rid: 'q' }] });
  const full = await waitFor('the reference player at the server\'s choice', () => reference.evaluate(played), (p) => p.frames > 30 && p.width >= 320, 40_000);
  await reference.evaluate(() => window.whep.client.selectLayer({ mediaId: '1', rid: 'q' }));
  const chosen = await waitFor('the quarter layer it chose', () => reference.evaluate(played), (p) => p.width === 160, 40_000);
  await reference.evaluate(() => window.whep.client.unselectLayer());
  const back = await waitFor('a wider layer again', () => reference.evaluate(played), (p) => p.width > 160, 40_000);
  console.log(`reference WHEP layer: ${full.width} px, rid q ${chosen.width} px, unselected ${back.width} px`);
  // What a layer request that cannot be met gets.
  const refused = await reference.evaluate(async (url) => {
    const post = (body) => fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body });
    return [(await post('{"rid": "x"}')).status, (await post('{"mediaId": "0"}')).status, (await post('nope')).status];
  }, started.layer);
  assert.deepEqual(refused, [400, 400, 400]);
  await reference.evaluate(() => window.whep.client.stop());

  for (const page of [encoder, players.high, players.low]) {
    const status = await page.evaluate(async () => {
      const session = window.whip ?? window.whep;
      return (await fetch(session.location, { method: 'DELETE' })).status;
    });
    assert.equal(status, 200);
  }
});

/** Runs in a page: publishes camera and microphone with the reference WHIPClient. */
async function referencePublish({ endpoint, token }) {
  const { WHIPClient } = await import('/whip-whep/whip.js');
  const media = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
  const pc = new RTCPeerConnection();
  pc.addTransceiver(media.getAudioTracks()[0], { direction: 'sendonly' });
  pc.addTransceiver(media.getVideoTracks()[0], { direction: 'sendonly' });
  const client = new WHIPClient();
  window.whip = { pc, client };
  await client.publish(pc, endpoint, token);
  return { location: client.resourceURL.href };
}

/**
 * Runs in a page: plays with the reference WHEPClient, and records the named events of
 * the event stream it opens (its own handler listens for unnamed ones only): the page's
 * EventSource listens from its construction, so none is missed.
 */
async function referencePlay({ endpoint, token }) {
  const { WHEPClient } = await import('/whip-whep/whep.js');
  const events = [];
  const Native = window.EventSource;
  window.EventSource = class extends Native {
    constructor(...args) {
      super(...args);
      for (const name of ['active', 'inactive', 'layers', 'reconnect']) {
        this.addEventListener(name, ({ data }) => events.push({ name, data }));
      }
    }
  };
  const pc = new RTCPeerConnection();
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.addTransceiver('video', { direction: 'recvonly' });
  const video = document.createElement('video');
  video.autoplay = true;
  document.body.append(video);
  const stream = new MediaStream();
  pc.ontrack = ({ track }) => {
    stream.addTrack(track);
    video.srcObject = stream;
  };
  const client = new WHEPClient();
  window.whep = { pc, client, events };
  await client.view(pc, endpoint, token);
  return {
    location: client.resourceURL.href,
    events: client.eventsUrl ? client.eventsUrl.href : null,
    layer: client.layerUrl ? client.layerUrl.href : null,
  };
}

/** Runs in the reference player's page: the state of its event stream and its events. */
function referenceEvents() {
  const { client, events } = window.whep;
  const source = client.eventSource;
  return { open: source ? source.readyState === 1 : false, events: events.map((e) => e.name), all: events };
}

/** Runs in a page with `window.whep.pc` or `window.whip.pc`: its selected ICE ufrag. */
function localUfrag() {
  return (async () => {
    const { pc } = window.whep ?? window.whip;
    const stats = await pc.getStats();
    let ufrag = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        const pair = stats.get(s.selectedCandidatePairId);
        ufrag = stats.get(pair?.localCandidateId)?.usernameFragment ?? null;
      }
    });
    return { state: pc.connectionState, ufrag };
  })();
}

test('the draft author\'s reference WHIP and WHEP clients publish and play through Tutti', async () => {
  const origin = `http://127.0.0.1:${elsewhere.address().port}/`;
  const encoder = await openPage(browser, origin);
  const published = await encoder.evaluate(referencePublish, {
    endpoint: `${gateway.url}/v1/whip/concert`, token: await mint('concert', 'Violinist'),
  });
  console.log(`reference WHIP: ${JSON.stringify(published)}`);
  assert.match(published.location, /\/v1\/whip\/concert\/[A-Za-z0-9]+$/);
  await waitFor('the reference encoder to connect', () => encoder.evaluate(localUfrag), (s) => s.state === 'connected');

  const player = await openPage(browser, origin);
  const started = await player.evaluate(referencePlay, { endpoint: `${gateway.url}/v1/whep/concert` });
  console.log(`reference WHEP: ${JSON.stringify(started)}`);
  assert.ok(started.events, 'the client found the server-sent events Link');
  const playing = await waitFor(
    'the reference player to decode picture and sound',
    () => player.evaluate(played),
    (p) => p.frames > 30 && p.width > 0 && p.audioEnergy > 0,
    40_000,
  );
  console.log(`reference WHEP player: ${JSON.stringify(playing)}`);
  await waitFor('its event stream to open across origins', () => player.evaluate(referenceEvents), (e) => e.open);

  // Its ICE restart (PATCH with If-Match: *, the answering fragment patched into its
  // remote description), and the encoder's.
  for (const [page, what] of [[player, 'player'], [encoder, 'encoder']]) {
    const before = await page.evaluate(localUfrag);
    await page.evaluate(() => (window.whep ?? window.whip).client.restart());
    const after = await waitFor(
      `the reference ${what} on a new ICE session`,
      () => page.evaluate(localUfrag),
      (s) => s.state === 'connected' && s.ufrag && s.ufrag !== before.ufrag,
    );
    console.log(`reference ${what} ICE restart: ufrag ${before.ufrag} -> ${after.ufrag}`);
  }
  const decoded = (await player.evaluate(played)).frames;
  await waitFor(
    'the reference player to go on decoding after both restarts',
    () => player.evaluate(played),
    (p) => p.frames > decoded + 30,
    40_000,
  );

  // The encoder stops (DELETE): the player's event stream says the stage is off the air.
  await encoder.evaluate(() => window.whip.client.stop());
  const told = await waitFor(
    'the inactive event',
    () => player.evaluate(referenceEvents),
    (e) => e.events.includes('inactive'),
  );
  console.log(`reference WHEP events: ${JSON.stringify(told)}`);
  // On the air when the stream opened, then off (no simulcast here: no layers event).
  assert.deepEqual(told.events, ['active', 'inactive']);
  await player.evaluate(() => window.whep.client.stop());
  // Both clients' DELETEs ended their sessions.
  for (const location of [published.location, started.location]) {
    assert.equal((await fetch(location, { method: 'DELETE' })).status, 404, location);
  }
});
