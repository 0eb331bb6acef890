// A viewer on a narrow downlink, with real browsers: Ana publishes simulcast from home;
// Ben watches from a hotel whose link carries 300 kbit/s (the simulated network's rate
// limit, user space: this kernel has no netem); Cai watches from home. (Ben and Cai have
// no camera: with two videos in the room, 300 kbit/s has room for one, and the other is
// paused for Ben, which the virtual-clock tests cover.) Ben's downlink
// estimate moves him to Ana's low layer and keeps her sound whole, while Cai keeps the
// larger layer, and the room shows Ben's connection as held back. Prints how long Ben took
// to settle and what he lost after; then the link opens up and Ben climbs back.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  launch, openPage, openPageWithCodec, waitFor, waitForPlayingVideo, waitForAudio, inbound, participantId,
  startNetSim, startProcess, binary, shardCounters,
} from './lib.mjs';

const LIMIT_KBPS = 300;

let netsim;
let gateway;
let gatewayUrl;
let home;
let homeViewer;
let hotel;

before(async () => {
  netsim = await startNetSim({
    sites: [
      { name: 'server', host: true },
      { name: 'hotel' },
    ],
    links: [
      // About 0.8 s of queue at the limit, as a hotel's access point buffers.
      { a: 'hotel', b: 'server', delay_ms: 20, jitter_ms: 1, rate_kbps: LIMIT_KBPS, queue_packets: 25 },
    ],
    seed: 18,
  });
  const [ip] = netsim.sites.server.addresses;
  // One room whose publishers send VP9 spatial layers (SVC); the rest are made on first
  // join, with simulcast.
  const rooms = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tutti-downlink-')), 'rooms.toml');
  fs.writeFileSync(rooms, '[[rooms]]\nname = "svc-lesson"\nsvc = true\n[[rooms]]\nname = "av1-lesson"\nsvc = true\nsvcCodec = "av1"\n');
  gateway = await startProcess(binary('tutti-gateway'), [
    '--listen', `${ip}:0`, '--media-bind', ip, '--advertise-ip', ip, '--shards', '1', '--rooms', rooms,
  ], /listening on (http:\/\/\S+)/);
  gatewayUrl = gateway.match[1];
  home = await launch({ secureOrigins: [gatewayUrl] });
  // Cai, like Ben, only watches: Ana's is the one video in the room.
  homeViewer = await launch({ secureOrigins: [gatewayUrl], fakeUi: false });
  // Ben only watches: no camera or microphone (a prompt nobody answers is a denial), so
  // the narrow link carries only what he receives.
  hotel = await launch({ namespace: netsim.sites.hotel.namespace, secureOrigins: [gatewayUrl], fakeUi: false });
});

after(async () => {
  for (const browser of [home, homeViewer, hotel]) if (browser) await browser.close();
  if (gateway) await gateway.stop();
  if (netsim) await netsim.stop();
});

/** Frames Ana's camera encoded so far, per simulcast layer. */
function encoded(page) {
  return page.evaluate(async () => {
    const frames = {};
    (await window.tutti.state.videoSender.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') frames[s.rid] = s.framesEncoded || 0;
    });
    return frames;
  });
}

/** The shard's counters of what it held back, probed and resent. */
function shardMetrics() {
  return shardCounters(gatewayUrl, ['probe_padding_bytes_total', 'retransmissions_total', 'retransmissions_withheld_total', 'keyframe_requests_sent_total', 'gaps_filled_total']);
}

/**
 * Ana's page from `browser`, her camera's codec chosen: `VP8` (the web client's own
 * choice), or `VP9` or `AV1` first among her codecs, as an app calling `setCodecPreferences`
 * would (the shard accepts both).
 */
function openPublisher(browser, url, codec) {
  return codec === 'VP8' ? openPage(browser, url) : openPageWithCodec(browser, url, codec);
}

/** The codec `page` decodes its video in (`video/VP8`, `video/VP9`, ...). */
function inboundVideoCodec(page) {
  return page.evaluate(async () => {
    const stats = await window.tutti.state.sub.getStats();
    const codecs = new Map();
    stats.forEach((s) => { if (s.type === 'codec') codecs.set(s.id, s.mimeType); });
    let mime = null;
    stats.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') mime = codecs.get(s.codecId) || mime; });
    return mime;
  });
}

/** What `start` and `end` (two readings of `from`) say of `kind` in between. */
function lossBetween(start, end, kind) {
  const received = end[kind].packetsReceived - start[kind].packetsReceived;
  const lost = end[kind].packetsLost - start[kind].packetsLost;
  return { received, lost, percent: (100 * lost) / Math.max(1, received + lost) };
}

/** Ben's inbound from `name`: per kind, packets received and lost, and the frame width. */
async function from(page, name) {
  const id = await participantId(page, name);
  const rows = (await inbound(page)).filter((r) => r.participant === id);
  const of = (kind) => rows.find((r) => r.kind === kind) || { packetsReceived: 0, packetsLost: 0, frameWidth: 0, framesDecoded: 0 };
  return { audio: of('audio'), video: of('video') };
}

/**
 * Ben joins `room` from the hotel and plays Ana's sound and video; resolves, once he has
 * had her low layer (160 pixels of her 640-pixel camera) for 3 s running, with his page,
 * his inbound from her then, and how long after his page opened those 3 s began.
 */
async function benSettlesOnTheLowLayer(room) {
  const joinedAt = Date.now();
  const ben = await openPage(hotel, `${gatewayUrl}/?room=${room}&name=Ben`);
  await waitForAudio(ben, 'Ana', 40_000);
  await waitForPlayingVideo(ben, 'Ana', 40_000);
  let lowSince = null;
  const settled = await waitFor('Ben on Ana\'s low layer for 3 s', async () => {
    const now = await from(ben, 'Ana');
    const low = now.video.frameWidth > 0 && now.video.frameWidth <= 160;
    if (!low) lowSince = null;
    else if (lowSince === null) lowSince = Date.now();
    return { ...now, steady: lowSince !== null && Date.now() - lowSince >= 3000 };
  }, (s) => s.steady, 60_000);
  return { ben, settled, settledAfter: lowSince - joinedAt };
}

/**
 * Waits 10 s; resolves with Ben's inbound from Ana then, the frames Ana encoded per layer
 * meanwhile, and what the shard's counters counted.
 */
async function tenSeconds(ben, ana) {
  const anaBefore = await encoded(ana);
  const metricsBefore = await shardMetrics();
  await ben.waitForTimeout(10_000);
  const end = await from(ben, 'Ana');
  const anaAfter = await encoded(ana);
  const metricsAfter = await shardMetrics();
  const anaFrames = Object.fromEntries(Object.keys(anaAfter).map((rid) => [rid, anaAfter[rid] - (anaBefore[rid] || 0)]));
  const shard = Object.fromEntries(Object.keys(metricsAfter).map((k) => [k, metricsAfter[k] - (metricsBefore[k] || 0)]));
  return { end, anaFrames, shard };
}

test(`a viewer behind ${LIMIT_KBPS} kbit/s settles on the low layer with its sound whole; another keeps the larger one`, async () => {
  const ana = await openPage(home, `${gatewayUrl}/?room=hotel-lesson&name=Ana`);
  await waitFor('Ana in the room', () => ana.evaluate(() => window.tutti.state.joined), (j) => j === true, 30_000);
  const cai = await openPage(homeViewer, `${gatewayUrl}/?room=hotel-lesson&name=Cai`);
  const { ben, settled, settledAfter } = await benSettlesOnTheLowLayer('hotel-lesson');

  // Then 10 s: what Ben receives of Ana, and what he loses.
  const start = settled;
  const { end, anaFrames, shard } = await tenSeconds(ben, ana);
  const audio = lossBetween(start, end, 'audio');
  const video = lossBetween(start, end, 'video');
  const caiSees = await waitFor("Cai on Ana's larger layer", () => from(cai, 'Ana'), (s) => s.video.frameWidth > 160, 30_000);
  console.log(`downlink: Ben behind ${LIMIT_KBPS} kbit/s on Ana's ${end.video.frameWidth}-px layer ${settledAfter} ms after joining (steady 3 s by then); `
    + `over the next 10 s audio ${audio.received} packets, ${audio.percent.toFixed(2)} % lost, video ${video.received} packets, ${video.percent.toFixed(2)} % lost, `
    + `${end.video.framesDecoded - start.video.framesDecoded} frames decoded (Ana encoded ${JSON.stringify(anaFrames)}); Cai on Ana's ${caiSees.video.frameWidth}-px layer; `
    + `the shard meanwhile ${JSON.stringify(shard)}`);
  // Everyone sees that Ben's connection holds his video back; Ana's and Cai's are good.
  const shown = await waitFor('the room showing Ben\'s connection as not good', async () => ({
    cai: await cai.evaluate(() => window.tutti.shownQualities()),
    ben: await ben.evaluate(() => window.tutti.shownQualities()),
  }), (q) => ['fair', 'poor'].includes(q.cai.Ben) && q.cai.Ana === 'good' && q.cai.me === 'good' && ['fair', 'poor'].includes(q.ben.me), 20_000);
  console.log(`downlink: connection quality shown at Cai ${JSON.stringify(shown.cai)}, at Ben ${JSON.stringify(shown.ben)}`);
  assert.ok(end.video.frameWidth > 0 && end.video.frameWidth <= 160, JSON.stringify(end.video));
  assert.ok(audio.received >= 450, `Ana's sound keeps coming: ${JSON.stringify(audio)}`);
  assert.ok(audio.percent < 2 && video.percent < 2, JSON.stringify({ audio, video }));
  assert.ok(end.video.framesDecoded - start.video.framesDecoded > 50, 'Ben\'s video keeps playing');

  // The hotel's link opens up: probes find the room, and Ben climbs to the layer Cai gets.
  await netsim.setLink({ a: 'hotel', b: 'server', delay_ms: 20, jitter_ms: 1 });
  const liftedAt = Date.now();
  const climbed = await waitFor("Ben back on Ana's larger layer", () => from(ben, 'Ana'),
    (s) => s.video.frameWidth > 160, 90_000);
  const climbedAfter = Date.now() - liftedAt;
  const words = await waitFor('the room showing Ben\'s connection as good again',
    () => cai.evaluate(() => window.tutti.shownQualities()), (q) => q.Ben === 'good', 20_000);
  console.log(`downlink: the limit lifted, Ben on Ana's ${climbed.video.frameWidth}-px layer ${climbedAfter} ms later; Cai shows ${JSON.stringify(words)}`);
  for (const page of [ana, ben, cai]) await page.context().close();
});

// Across continents (the seeds' Seoul and Abu Dhabi): the same 300 kbit/s, 120 ms each
// way with jitter, and 1 % of packets lost at random both ways, as a long Wi-Fi path loses
// them. Random loss is not congestion: Ben still settles on Ana's low layer, resends
// repair his video across the 240 ms round trip, and when the limit lifts he climbs
// although the loss goes on. The low layer and the sound only just fit this link: in two
// runs of three, before a failed probe's received rate counted as carried, the cut of his
// first seconds held him at half the layer's frames (151 and 152 of 201) for the whole
// 10 s; since, 198 to 201 of 200 in four runs. The bound stays at half the frames.
const FAR = { a: 'hotel', b: 'server', delay_ms: 120, jitter_ms: 5, loss: 0.01 };

test(`a viewer ${2 * FAR.delay_ms} ms away behind ${LIMIT_KBPS} kbit/s with ${100 * FAR.loss} % random loss settles on the low layer, and climbs when the limit lifts`, async () => {
  await netsim.setLink({ ...FAR, rate_kbps: LIMIT_KBPS, queue_packets: 25 });
  const ana = await openPage(home, `${gatewayUrl}/?room=far-lesson&name=Ana`);
  await waitFor('Ana in the room', () => ana.evaluate(() => window.tutti.state.joined), (j) => j === true, 30_000);
  const { ben, settled, settledAfter } = await benSettlesOnTheLowLayer('far-lesson');

  const start = settled;
  const { end, anaFrames, shard } = await tenSeconds(ben, ana);
  const audio = lossBetween(start, end, 'audio');
  const video = lossBetween(start, end, 'video');
  const decoded = end.video.framesDecoded - start.video.framesDecoded;
  const lowEncoded = anaFrames.q || 0;
  console.log(`downlink: Ben ${2 * FAR.delay_ms} ms away behind ${LIMIT_KBPS} kbit/s, ${100 * FAR.loss} % lost at random, on Ana's ${end.video.frameWidth}-px layer ${settledAfter} ms after joining; `
    + `over the next 10 s audio ${audio.received} packets, ${audio.percent.toFixed(2)} % lost, video ${video.received} packets, ${video.percent.toFixed(2)} % lost, `
    + `${decoded} frames decoded of the ${lowEncoded} Ana encoded for that layer; the shard meanwhile ${JSON.stringify(shard)}`);
  assert.ok(end.video.frameWidth > 0 && end.video.frameWidth <= 160, JSON.stringify(end.video));
  assert.ok(audio.received >= 450 && audio.percent < 3, `Ana's sound keeps coming: ${JSON.stringify(audio)}`);
  // What a resend repairs is not lost; what is left is the resends' own share of the loss.
  assert.ok(video.percent < 2, JSON.stringify(video));
  // The random loss did not pause the video or hold it below half the layer's frames.
  assert.ok(decoded >= 0.5 * lowEncoded, `${decoded} of ${lowEncoded} frames`);

  await netsim.setLink(FAR);
  const liftedAt = Date.now();
  const climbed = await waitFor("Ben on Ana's larger layer", () => from(ben, 'Ana'),
    (s) => s.video.frameWidth > 160, 90_000);
  console.log(`downlink: the limit lifted (the loss and delay kept), Ben on Ana's ${climbed.video.frameWidth}-px layer ${Date.now() - liftedAt} ms later`);
  for (const page of [ana, ben]) await page.context().close();
});

// Narrower still: 130 kbit/s carries Ana's sound but not her low layer at its full frame
// rate. Ben used to get no video at all (paused); now the shard sends him the low layer's
// lower temporal layers: fewer frames, every one decodable (the sequence numbers and
// picture IDs close up over the frames left out). This link is only just wide enough, and
// the estimate wavers around what it carries: his video loss (2.6 to 8.5 % in eight runs
// while the probes looking for room to climb padded on the video's own stream; since they
// pad on its RTX stream, only TL0 kept through a dip in the estimate can overfill the
// link's queue) and a second now and then without a new frame (none in five runs, one in
// two, five in one run before a dip in the estimate stopped pausing the video; with the
// probes on RTX, VP9: none in seven runs, one, two, and three in one full suite's run,
// which failed this bound, cause not yet found) are bounded, not ruled out.
const NARROW_KBPS = 130;

for (const codec of ['VP8', 'VP9', 'AV1']) test(`a viewer behind ${NARROW_KBPS} kbit/s gets the low layer of ${codec} at a lower frame rate instead of no video, and more frames when the link widens`, async () => {
  await netsim.setLink({ a: 'hotel', b: 'server', delay_ms: 20, jitter_ms: 1, rate_kbps: NARROW_KBPS, queue_packets: 25 });
  const room = `hostel-lesson-${codec.toLowerCase()}`;
  const ana = await openPublisher(home, `${gatewayUrl}/?room=${room}&name=Ana`, codec);
  await waitFor('Ana in the room', () => ana.evaluate(() => window.tutti.state.joined), (j) => j === true, 30_000);
  const joinedAt = Date.now();
  const ben = await openPage(hotel, `${gatewayUrl}/?room=${room}&name=Ben`);
  await waitForAudio(ben, 'Ana', 40_000);
  // Settled: Ben decodes Ana's low layer, at most 60 % of the frames she encodes for it,
  // and at least one a second, over 3 s running.
  const samples = [];
  const sample = async () => ({ at: Date.now(), ben: await from(ben, 'Ana'), ana: await encoded(ana) });
  const rateOver = (a, b) => ({
    decoded: b.ben.video.framesDecoded - a.ben.video.framesDecoded,
    encoded: (b.ana.q || 0) - (a.ana.q || 0),
    seconds: (b.at - a.at) / 1000,
  });
  const settled = await waitFor('Ben decoding Ana\'s low layer at a lower frame rate for 3 s', async () => {
    samples.push(await sample());
    const first = samples.find((x) => samples.at(-1).at - x.at <= 3200);
    const last = samples.at(-1);
    const r = rateOver(first, last);
    const steady = last.at - first.at >= 2800 && last.ben.video.frameWidth > 0 && last.ben.video.frameWidth <= 160
      && r.decoded >= r.seconds && r.decoded <= 0.6 * r.encoded;
    await ben.waitForTimeout(500);
    return { ...r, steady, last };
  }, (s) => s.steady, 90_000);
  const settledAfter = settled.last.at - joinedAt;

  // Then 10 s, sampled each second: no second without a new frame.
  const start = await sample();
  let previous = start;
  let stalls = 0;
  for (let second = 0; second < 10; second += 1) {
    await ben.waitForTimeout(1000);
    const now = await sample();
    if (now.ben.video.framesDecoded === previous.ben.video.framesDecoded) stalls += 1;
    previous = now;
  }
  const end = previous;
  const r = rateOver(start, end);
  const audio = lossBetween(start.ben, end.ben, 'audio');
  const video = lossBetween(start.ben, end.ben, 'video');
  const decodes = await inboundVideoCodec(ben);
  console.log(`downlink: Ben behind ${NARROW_KBPS} kbit/s decoding Ana's ${end.ben.video.frameWidth}-px ${decodes} layer at a lower frame rate ${settledAfter} ms after joining; `
    + `over the next ${r.seconds.toFixed(1)} s ${r.decoded} frames decoded of the ${r.encoded} Ana encoded for that layer `
    + `(${(r.decoded / r.seconds).toFixed(1)} of ${(r.encoded / r.seconds).toFixed(1)} per second), ${stalls} seconds without a new frame; `
    + `audio ${audio.received} packets, ${audio.percent.toFixed(2)} % lost, video ${video.received} packets, ${video.percent.toFixed(2)} % lost`);
  assert.equal(decodes, `video/${codec}`);
  assert.ok(end.ben.video.frameWidth > 0 && end.ben.video.frameWidth <= 160, JSON.stringify(end.ben.video));
  assert.ok(r.decoded >= 10 && r.decoded <= 0.6 * r.encoded, `fewer frames, but video: ${JSON.stringify(r)}`);
  assert.ok(stalls <= 2, `a new frame in nearly every second: ${stalls} seconds without`);
  assert.ok(audio.received >= 450 && audio.percent < 2, `Ana's sound stays whole: ${JSON.stringify(audio)}`);
  assert.ok(video.percent < 5, JSON.stringify(video));

  // The link widens to 170 kbit/s: room for half the frames. Ben climbs to TL1 at one of
  // its layer-sync frames, with no keyframe: at least 40 % of Ana's frames, none of them a
  // keyframe. (Where the link already let him have TL1 now and then, he may be there.)
  const keyframes = () => ben.evaluate(async () => {
    let count = 0;
    (await window.tutti.state.sub.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') count += s.keyFramesDecoded || 0;
    });
    return count;
  });
  const keyframesBefore = await keyframes();
  await netsim.setLink({ a: 'hotel', b: 'server', delay_ms: 20, jitter_ms: 1, rate_kbps: 170, queue_packets: 25 });
  const widenedAt = Date.now();
  const settledRate = r.decoded / r.seconds;
  samples.length = 0;
  const climbed = await waitFor('Ben decoding more of Ana\'s frames', async () => {
    samples.push(await sample());
    const first = samples.find((x) => samples.at(-1).at - x.at <= 3200);
    const c = rateOver(first, samples.at(-1));
    await ben.waitForTimeout(500);
    return { ...c, rate: c.decoded / Math.max(c.seconds, 0.001), span: c.seconds };
  }, (c) => c.span >= 2.8 && c.decoded >= 0.4 * c.encoded, 90_000);
  const keyframesAfter = await keyframes();
  console.log(`downlink: the link widened to 170 kbit/s, Ben decoding ${codec} ${climbed.rate.toFixed(1)} frames a second `
    + `(from ${settledRate.toFixed(1)}) ${Date.now() - widenedAt} ms later, ${keyframesAfter - keyframesBefore} keyframes decoded meanwhile`);
  assert.equal(keyframesAfter, keyframesBefore, 'the climb needed no keyframe');
  for (const page of [ana, ben]) await page.context().close();
});

// A publisher whose browser prefers VP9 (an app that puts it first among its codecs; the
// shard accepts it). With no scalability mode named per layer, Chromium sent only the
// lowest VP9 layer and its uplink estimate stayed near 340 kbit/s, so even a viewer at
// home got 160 pixels; with L1T3 named, as the web client now does, it sends the layers
// as it does VP8's. Cai at home gets the 320-pixel layer, Ben behind 300 kbit/s the
// 160-pixel one, both decoding VP9.
test('a publisher sending VP9 sends every layer: 320 pixels for a viewer at home, 160 behind the narrow link', async () => {
  await netsim.setLink({ a: 'hotel', b: 'server', delay_ms: 20, jitter_ms: 1, rate_kbps: LIMIT_KBPS, queue_packets: 25 });
  const ana = await openPublisher(home, `${gatewayUrl}/?room=vp9-lesson&name=Ana`, 'VP9');
  await waitFor('Ana in the room', () => ana.evaluate(() => window.tutti.state.joined), (j) => j === true, 30_000);
  const cai = await openPage(homeViewer, `${gatewayUrl}/?room=vp9-lesson&name=Cai`);
  const ben = await openPage(hotel, `${gatewayUrl}/?room=vp9-lesson&name=Ben`);
  /** `page`'s video from `name`: its codec, frame width and frames decoded. */
  const videoFrom = async (page, name) => {
    const id = await participantId(page, name);
    const row = (await inbound(page)).find((r) => r.participant === id && r.kind === 'video');
    const codec = await inboundVideoCodec(page);
    return { codec, frameWidth: row?.frameWidth || 0, framesDecoded: row?.framesDecoded || 0 };
  };
  const playing = (width) => (v) => v.codec === 'video/VP9' && v.framesDecoded > 40 && width(v.frameWidth);
  const atHome = await waitFor("Cai decoding Ana's VP9 above 160 pixels", () => videoFrom(cai, 'Ana'), playing((w) => w > 160), 60_000);
  const atHotel = await waitFor("Ben decoding Ana's VP9 at 160 pixels", () => videoFrom(ben, 'Ana'), playing((w) => w > 0 && w <= 160), 60_000);
  const layers = await ana.evaluate(async () => {
    const out = {};
    (await window.tutti.state.videoSender.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp') out[s.rid] = { frames: s.framesEncoded || 0, width: s.frameWidth || 0, mode: s.scalabilityMode };
    });
    return out;
  });
  console.log(`downlink: Ana sending VP9 ${JSON.stringify(layers)}; Cai decoding ${atHome.codec} at ${atHome.frameWidth} px, Ben at ${atHotel.frameWidth} px`);
  // Both keep playing.
  const later = await waitFor('both still decoding', async () => ({ cai: await videoFrom(cai, 'Ana'), ben: await videoFrom(ben, 'Ana') }),
    (v) => v.cai.framesDecoded > atHome.framesDecoded + 30 && v.ben.framesDecoded > atHotel.framesDecoded + 30, 20_000);
  assert.ok(later.cai.frameWidth > 160 && later.ben.frameWidth <= 160, JSON.stringify(later));
  assert.ok((layers.h?.frames || 0) > 0, `Ana encodes her 320-pixel VP9 layer: ${JSON.stringify(layers)}`);
  for (const page of [ana, ben, cai]) await page.context().close();
});

// A room that asks for SVC: Ana's browser sends one VP9 (or, where the room says so, AV1)
// stream of spatial layers (Chromium makes two of a 640x480 camera: 320 and 640 pixels
// wide, each in three temporal layers), and the shard sends each viewer the spatial layers
// up to the one its downlink carries, the RTP marker moved to the end of that layer so the
// viewer's decoder takes each picture. It reads VP9's layers from the payload descriptor,
// AV1's from the dependency descriptor, which it passes on. Cai at home decodes the full
// size; Ben behind 300 kbit/s a smaller one with his sound whole, and the full size again
// once the limit lifts (at a key picture the shard asks for).
for (const [codec, room] of [['VP9', 'svc-lesson'], ['AV1', 'av1-lesson']]) test(`a publisher sending ${codec} spatial layers: the full size at home, a smaller one behind the narrow link, and up again when it widens`, async () => {
  const mime = `video/${codec}`;
  await netsim.setLink({ a: 'hotel', b: 'server', delay_ms: 20, jitter_ms: 1, rate_kbps: LIMIT_KBPS, queue_packets: 25 });
  const ana = await openPage(home, `${gatewayUrl}/?room=${room}&name=Ana`);
  await waitFor('Ana in the room', () => ana.evaluate(() => window.tutti.state.joined), (j) => j === true, 30_000);
  const sending = await waitFor(`Ana sending ${codec} spatial layers`, () => ana.evaluate(async () => {
    const stats = await window.tutti.state.videoSender?.getStats();
    if (!stats) return [];
    const codecs = new Map();
    stats.forEach((s) => { if (s.type === 'codec') codecs.set(s.id, s.mimeType); });
    const out = [];
    stats.forEach((s) => {
      if (s.type === 'outbound-rtp') out.push({ codec: codecs.get(s.codecId), mode: s.scalabilityMode, width: s.frameWidth || 0, frames: s.framesEncoded || 0 });
    });
    return out;
  }), (out) => out.length === 1 && out[0].codec === mime && /^L[23]T3_KEY$/.test(out[0].mode || '') && out[0].frames > 0, 30_000);
  const cai = await openPage(homeViewer, `${gatewayUrl}/?room=${room}&name=Cai`);
  const joinedAt = Date.now();
  const ben = await openPage(hotel, `${gatewayUrl}/?room=${room}&name=Ben`);
  const watch = async (page) => ({ ...(await from(page, 'Ana')), codec: await inboundVideoCodec(page), at: Date.now() });
  // The camera's width: the top spatial layer's (Chromium starts an SVC stream smaller).
  const full = await ana.evaluate(() => window.tutti.state.camTrack.getSettings().width);
  const atHome = await waitFor('Cai decoding Ana\'s full size', () => watch(cai),
    (v) => v.codec === mime && v.video.frameWidth === full && v.video.framesDecoded > 40, 60_000);
  // Settled: a smaller spatial layer, frames decoded over 3 s running.
  const samples = [];
  const settled = await waitFor('Ben decoding a smaller spatial layer for 3 s', async () => {
    samples.push(await watch(ben));
    const last = samples.at(-1);
    const first = samples.find((x) => last.at - x.at <= 3200);
    const smaller = (v) => v.codec === mime && v.video.frameWidth > 0 && v.video.frameWidth < full;
    await ben.waitForTimeout(500);
    return {
      steady: last.at - first.at >= 2800 && samples.filter((x) => x.at >= first.at).every(smaller)
        && last.video.framesDecoded - first.video.framesDecoded >= 30,
      last,
    };
  }, (s) => s.steady, 60_000);
  const start = settled.last;
  const caiStart = await watch(cai);
  const shardBefore = await shardMetrics();
  await ben.waitForTimeout(10_000);
  const end = await watch(ben);
  const caiEnd = await watch(cai);
  const shardAfter = await shardMetrics();
  const shard = Object.fromEntries(Object.entries(shardAfter).map(([k, v]) => [k, v - (shardBefore[k] || 0)]));
  const audio = lossBetween(start, end, 'audio');
  const video = lossBetween(start, end, 'video');
  const frames = end.video.framesDecoded - start.video.framesDecoded;
  const caiFrames = caiEnd.video.framesDecoded - caiStart.video.framesDecoded;
  console.log(`downlink: Ana sending ${JSON.stringify(sending[0])}; Cai decoding ${atHome.video.frameWidth} px; Ben behind ${LIMIT_KBPS} kbit/s on `
    + `${end.video.frameWidth} px ${start.at - joinedAt} ms after joining, then over ${((end.at - start.at) / 1000).toFixed(1)} s ${frames} frames decoded (Cai ${caiFrames}), `
    + `audio ${audio.received} packets, ${audio.percent.toFixed(2)} % lost, video ${video.received} packets, ${video.percent.toFixed(2)} % lost; `
    + `the shard meanwhile ${JSON.stringify(shard)}`);
  assert.ok(end.video.frameWidth > 0 && end.video.frameWidth < full, JSON.stringify(end.video));
  // Every picture, only smaller: as many frames as Cai decodes of the full size (Ana
  // encodes VP9 at about 20 pictures a second here, AV1 at about 15).
  assert.ok(frames >= 100 && frames >= 0.85 * caiFrames, `Ben's smaller layer plays at Ana's frame rate: ${frames} frames in 10 s, Cai ${caiFrames}`);
  assert.ok(audio.received >= 450 && audio.percent < 2, `Ana's sound stays whole: ${JSON.stringify(audio)}`);
  // The shard's probes for room to move up pad on the video's RTX stream: what this
  // link's 25-packet queue drops of them is not Ben's video (0 to 4 % of it was, in ten
  // runs, while they padded on the video's own stream).
  assert.ok(video.percent < 2, JSON.stringify(video));

  await netsim.setLink({ a: 'hotel', b: 'server', delay_ms: 20, jitter_ms: 1 });
  const liftedAt = Date.now();
  const climbed = await waitFor('Ben decoding Ana\'s full size', () => watch(ben),
    (v) => v.video.frameWidth === full, 90_000);
  const later = await waitFor('Ben\'s full size playing', () => watch(ben),
    (v) => v.video.framesDecoded > climbed.video.framesDecoded + 30 && v.video.frameWidth === full, 20_000);
  console.log(`downlink: the limit lifted, Ben on ${later.video.frameWidth} px ${climbed.at - liftedAt} ms later`);
  for (const page of [ana, ben, cai]) await page.context().close();
});
