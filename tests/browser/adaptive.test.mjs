// Each video is sent at the size it is shown: three browsers in a room, each publishing
// simulcast. One page shows a participant's tile small and hides another's; the shard
// sends the small one's low layer and nothing of the hidden one, and a publisher whose
// every viewer shows it small stops encoding its larger layer; in a room of VP9 or AV1
// spatial layers (SVC), it encodes fewer spatial layers, and none while nobody shows it.
// Through the gateway's local mode (one embedded shard).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startGateway, launch, openPage, waitFor, waitForPlayingVideo, waitForAudio, inbound, participantId, encodedOver,
} from './lib.mjs';

let gateway;
let browser;
const pages = {};

before(async () => {
  // One room that asks for VP9 spatial layers (SVC); the others are ordinary.
  const rooms = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tutti-adaptive-')), 'rooms.toml');
  fs.writeFileSync(rooms, '[[rooms]]\nname = "svc-trio"\nsvc = true\n[[rooms]]\nname = "av1-trio"\nsvc = true\nsvcCodec = "av1"\n');
  gateway = await startGateway(['--shards', '1', '--rooms', rooms]);
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  if (gateway) await gateway.stop();
});

/** Sets the tile of `name` on `page` to `width` CSS pixels, or hides it (`null`). */
function showTile(page, name, width) {
  return page.evaluate(([who, px]) => {
    const tile = [...document.querySelectorAll('.tile:not(.local)')].find((t) => t.dataset.name === who);
    if (px === null) {
      tile.style.display = 'none';
    } else {
      tile.style.display = '';
      tile.style.width = `${px}px`;
    }
  }, [name, width]);
}

/** What `page` receives of `name`'s video: frames decoded, bytes, frame width. */
async function receivedVideo(page, name) {
  const id = await participantId(page, name);
  const row = (await inbound(page)).find((r) => r.kind === 'video' && r.participant === id);
  return row || { framesDecoded: 0, bytesReceived: 0, frameWidth: 0 };
}

test('three browsers, each publishing simulcast, see and hear each other', async () => {
  for (const name of ['Ana', 'Ben', 'Cai']) {
    pages[name] = await openPage(browser, `${gateway.url}/?room=trio&name=${name}`);
  }
  for (const [viewer, page] of Object.entries(pages)) {
    for (const other of Object.keys(pages).filter((n) => n !== viewer)) {
      await waitForPlayingVideo(page, other, 40_000);
      await waitForAudio(page, other, 40_000);
    }
  }
  const simulcast = await pages.Ana.evaluate(() => window.tutti.state.simulcast);
  assert.equal(simulcast, true, 'an ordinary room sends simulcast');
  // The shard's transport-cc feedback reaches each publisher's bandwidth estimate.
  // Chromium starts it at 300 kbit/s; without feedback it falls to 82.8 kbit/s (every
  // page, with the shard's transport-cc withheld), with it it holds or climbs. How far
  // depends on its first probes and on what the encoders send, as a page sending little
  // raises it only to about 1.5 times that: 0.39 to 2.1 Mbit/s on this machine.
  for (const [name, page] of Object.entries(pages)) {
    const estimate = await waitFor(`${name}'s estimate of her uplink to stay up`, () => page.evaluate(async () => {
      let bps = 0;
      (await window.tutti.state.videoSender.getStats()).forEach((s) => {
        if (s.type === 'candidate-pair' && s.availableOutgoingBitrate) bps = Math.max(bps, s.availableOutgoingBitrate);
      });
      return bps;
    }), (bps) => bps > 200_000, 20_000);
    console.log(`adaptive: ${name}'s uplink estimate ${estimate} bit/s`);
  }
  // Each tile shows its participant's connection, one's own too: all good on loopback.
  await waitFor('every tile showing a good connection', () => pages.Cai.evaluate(() => window.tutti.shownQualities()),
    (q) => q.me === 'good' && q.Ana === 'good' && q.Ben === 'good');
});

test('a small tile gets the low layer, a hidden one nothing, and a layer nobody receives is not encoded', async () => {
  const { Ana, Ben, Cai } = pages;
  // Both of Ana's viewers show her small; Cai hides Ben.
  await showTile(Ben, 'Ana', 150);
  await showTile(Cai, 'Ana', 150);
  await showTile(Cai, 'Ben', null);
  const asked = await waitFor('Cai asking for Ana small and Ben not at all',
    () => Cai.evaluate(() => window.tutti.askedQualities()),
    (q) => q.Ana === 'low' && q.Ben === 'off');
  const hiddenAt = Date.now();

  // Cai receives Ana's low layer: 160 pixels wide of a 640-pixel camera.
  const small = await waitFor("Ana's low layer at Cai", () => receivedVideo(Cai, 'Ana'),
    (v) => v.frameWidth > 0 && v.frameWidth <= 160, 30_000);
  // And nothing of Ben: his frame and byte counters stand still.
  const stopped = await waitFor("Ben's video to stop reaching Cai", async () => {
    const first = await receivedVideo(Cai, 'Ben');
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const then = await receivedVideo(Cai, 'Ben');
    return { frames: then.framesDecoded - first.framesDecoded, bytes: then.bytesReceived - first.bytesReceived };
  }, (d) => d.frames === 0 && d.bytes === 0, 30_000);
  const silentAfter = Date.now() - hiddenAt;
  // Ben still reaches Ana, whose tile of him is as large as ever.
  await waitForPlayingVideo(Ana, 'Ben');

  // Ana's larger layers are received by nobody: her browser stops encoding the middle
  // one (switched off after the shard's 3-second wait), the low one goes on. (Chromium
  // never encodes the full layer of a 640x480 camera; never having flowed, it is left as
  // it is.)
  const encoded = await waitFor("Ana's larger layers switched off", () => encodedOver(Ana, 1000),
    (e) => e.active.q && !e.active.h && e.grown.q > 0 && !(e.grown.h > 0) && !(e.grown.f > 0), 30_000);
  const pausedAfter = Date.now() - hiddenAt;
  console.log(`adaptive: Ana at Cai ${small.frameWidth} px wide; Ben's video stopped reaching Cai within ${silentAfter} ms; Ana's layers ${JSON.stringify(encoded)} ${pausedAfter} ms after the tiles changed (asked ${JSON.stringify(asked)})`);

  // Cai shows Ben again and Ana large: Ben's video comes back, and Ana's half-size layer
  // is encoded again and reaches Cai.
  const shownAt = Date.now();
  await showTile(Cai, 'Ben', 600);
  await showTile(Cai, 'Ana', 600);
  await waitForPlayingVideo(Cai, 'Ben', 30_000);
  const benBack = Date.now() - shownAt;
  const large = await waitFor("Ana's larger layer at Cai", () => receivedVideo(Cai, 'Ana'),
    (v) => v.frameWidth > 160, 30_000);
  const anaBack = Date.now() - shownAt;
  const resumed = await encodedOver(Ana, 1000);
  assert.ok(resumed.grown.h > 0 || resumed.grown.f > 0, JSON.stringify(resumed));
  console.log(`adaptive: shown again, Ben's video back at Cai in ${benBack} ms, Ana's ${large.frameWidth}-px layer in ${anaBack} ms`);
});

/** What `page`'s camera encoder makes over `ms`: its scalability mode and frame width
 * (outbound-rtp) and how many frames it encoded meanwhile. */
async function svcEncoding(page, ms) {
  const read = () => page.evaluate(async () => {
    let out = { mode: null, width: 0, frames: 0, bytes: 0 };
    const stats = await window.tutti.state.videoSender.getStats();
    const codecs = new Map();
    stats.forEach((s) => { if (s.type === 'codec') codecs.set(s.id, s.mimeType); });
    stats.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') {
        out = { mode: s.scalabilityMode, codec: codecs.get(s.codecId), width: s.frameWidth || 0, frames: s.framesEncoded || 0, bytes: s.bytesSent || 0 };
      }
    });
    const [encoding] = window.tutti.state.videoSender.getParameters().encodings;
    return { ...out, active: encoding.active, maxBitrate: encoding.maxBitrate, at: performance.now() };
  });
  const before = await read();
  await new Promise((resolve) => setTimeout(resolve, ms));
  const after = await read();
  const seconds = Math.max(0.001, (after.at - before.at) / 1000);
  return {
    mode: after.mode, codec: after.codec, width: after.width, active: after.active, maxBitrate: after.maxBitrate,
    encoded: after.frames - before.frames, kbps: Math.round((8 * (after.bytes - before.bytes)) / seconds / 1000),
  };
}

for (const [codec, room] of [['VP9', 'svc-trio'], ['AV1', 'av1-trio']]) test(`in a room of ${codec} spatial layers, a layer nobody receives is not encoded, nor the video while nobody shows it`, async () => {
  // The trio's pages are done with; six encoding pages would crowd two cores.
  for (const page of Object.values(pages)) await page.context().close();
  for (const name of Object.keys(pages)) delete pages[name];
  const svc = {};
  for (const name of ['Ana', 'Ben', 'Cai']) {
    svc[name] = await openPage(browser, `${gateway.url}/?room=${room}&name=${name}`);
  }
  const { Ana, Ben, Cai } = svc;
  // Ana's camera as one encoding of spatial layers: two of a 640x480 camera.
  const full = await waitFor(`Ana's ${codec} spatial layers at Ben and Cai`, async () => ({
    ana: await svcEncoding(Ana, 1000),
    ben: await receivedVideo(Ben, 'Ana'),
    cai: await receivedVideo(Cai, 'Ana'),
  }), (r) => r.ana.mode === 'L2T3_KEY' && r.ana.codec === `video/${codec}` && r.ben.frameWidth === 640 && r.cai.frameWidth === 640, 40_000);

  // Both show her small: each needs her base layer alone, and after the shard's 3 s her
  // browser encodes that layer alone, at its size.
  const smallAt = Date.now();
  await showTile(Ben, 'Ana', 150);
  await showTile(Cai, 'Ana', 150);
  const one = await waitFor("Ana encoding her base layer alone", () => svcEncoding(Ana, 1000),
    (e) => e.mode === 'L1T3' && e.width === 320 && e.encoded > 0, 30_000);
  const oneAfter = Date.now() - smallAt;
  // With the bitrate its layer had in both (about 173 kbit/s for 320x240): a single layer
  // would otherwise get the whole encoding's 1.5 Mbit/s.
  assert.ok(one.maxBitrate > 0 && one.maxBitrate < 250_000, JSON.stringify(one));
  const benSmall = await waitFor("Ana's video playing at Ben at 320 px", async () => {
    const first = await receivedVideo(Ben, 'Ana');
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const then = await receivedVideo(Ben, 'Ana');
    return { width: then.frameWidth, frames: then.framesDecoded - first.framesDecoded };
  }, (v) => v.width === 320 && v.frames >= 10, 20_000);
  const oneSteady = await svcEncoding(Ana, 2000);

  // Cai shows her large: both layers again, and Cai decodes the full size.
  const largeAt = Date.now();
  await showTile(Cai, 'Ana', 600);
  const two = await waitFor("Ana encoding both layers again", () => svcEncoding(Ana, 0),
    (e) => e.mode === 'L2T3_KEY' && e.width === 640 && e.maxBitrate === 1_500_000, 20_000);
  const twoAfter = Date.now() - largeAt;
  await waitFor("Ana's full size at Cai", () => receivedVideo(Cai, 'Ana'), (v) => v.frameWidth === 640, 20_000);
  const caiLarge = Date.now() - largeAt;
  // Ben, still showing her small, gets the base layer alone of the two.
  const benBase = await waitFor("Ana's base layer playing at Ben beside Cai's full size", async () => {
    const first = await receivedVideo(Ben, 'Ana');
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const then = await receivedVideo(Ben, 'Ana');
    return { width: then.frameWidth, frames: then.framesDecoded - first.framesDecoded };
  }, (v) => v.width === 320 && v.frames >= 8, 20_000);

  // Both hide her: nobody receives her video, and her browser stops encoding it.
  const hiddenAt = Date.now();
  await showTile(Ben, 'Ana', null);
  await showTile(Cai, 'Ana', null);
  const off = await waitFor("Ana's camera encoder stopped", () => svcEncoding(Ana, 1000),
    (e) => e.active === false && e.encoded === 0, 30_000);
  const offAfter = Date.now() - hiddenAt;
  // Shown again: encoded and playing again.
  const shownAt = Date.now();
  await showTile(Ben, 'Ana', 600);
  await waitFor("Ana's camera encoding again", () => svcEncoding(Ana, 1000), (e) => e.active === true && e.encoded > 0, 20_000);
  await waitForPlayingVideo(Ben, 'Ana', 20_000);
  const backAfter = Date.now() - shownAt;
  console.log(`adaptive: ${codec} SVC ${JSON.stringify(full.ana)}; both viewers small: Ana encoding ${JSON.stringify(one)} ${oneAfter} ms later (${oneSteady.kbps} kbit/s over the next 2 s), Ben decoding ${JSON.stringify(benSmall)}; `
    + `Cai large: Ana encoding ${two.mode} at ${two.width} px ${twoAfter} ms later, Cai at 640 px in ${caiLarge} ms, Ben meanwhile ${JSON.stringify(benBase)}; `
    + `both hidden: Ana's encoder stopped ${offAfter} ms later; shown again, playing at Ben in ${backAfter} ms`);
  for (const page of Object.values(svc)) await page.context().close();
});
