// A publisher on a lossy uplink, with real browsers: Ana sends from a café whose link
// loses 5 % of the packets each way (the simulated network, user space: this kernel has
// no netem); Cai watches from home on a clean link. The shard reads Ana's packets itself,
// so it is the shard that must notice each gap and ask Ana for it (NACK). Chromium answers
// with RTX on a stream of its own per simulcast layer, named only by the
// repaired-rtp-stream-id header extension (no SSRC in the SDP); the shard's connection
// unwraps it (vendor/rtc.patch) and the shard forwards it into the gap it left in Cai's
// stream. Before that patch the repairs were dropped and Cai lost what the link lost
// (3.4 to 6.0 % in three runs). Cai's video must arrive nearly whole; printed: what Ana
// was asked for and resent, and what Cai lost of her audio (not repaired: Opus conceals).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launch, openPage, waitFor, waitForPlayingVideo, inbound, participantId,
  startNetSim, startProcess, binary, shardCounters,
} from './lib.mjs';

const LOSS = 0.05;

let netsim;
let gateway;
let gatewayUrl;
let cafe;
let home;

before(async () => {
  netsim = await startNetSim({
    sites: [
      { name: 'server', host: true },
      { name: 'cafe' },
    ],
    links: [{ a: 'cafe', b: 'server', delay_ms: 30, jitter_ms: 1, loss: LOSS }],
    seed: 21,
  });
  const [ip] = netsim.sites.server.addresses;
  gateway = await startProcess(binary('tutti-gateway'), [
    '--listen', `${ip}:0`, '--media-bind', ip, '--advertise-ip', ip, '--shards', '1',
  ], /listening on (http:\/\/\S+)/);
  gatewayUrl = gateway.match[1];
  cafe = await launch({ namespace: netsim.sites.cafe.namespace, secureOrigins: [gatewayUrl] });
  // Cai only watches: no camera or microphone (a prompt nobody answers is a denial).
  home = await launch({ secureOrigins: [gatewayUrl], fakeUi: false });
});

after(async () => {
  for (const browser of [cafe, home]) if (browser) await browser.close();
  if (gateway) await gateway.stop();
  if (netsim) await netsim.stop();
});

/**
 * Ana's video as sent, summed over her simulcast layers: packets, NACKs heard, resent; and
 * how many layers are simulcast (a rid) with an RTX stream of their own.
 */
function sentVideo(page) {
  return page.evaluate(async () => {
    const out = { packetsSent: 0, nackCount: 0, retransmittedPacketsSent: 0, layersWithRtx: 0 };
    (await window.tutti.state.videoSender.getStats()).forEach((s) => {
      if (s.type !== 'outbound-rtp' || s.kind !== 'video') return;
      out.packetsSent += s.packetsSent || 0;
      out.nackCount += s.nackCount || 0;
      out.retransmittedPacketsSent += s.retransmittedPacketsSent || 0;
      if (s.rid && s.rtxSsrc) out.layersWithRtx += 1;
    });
    return out;
  });
}

/** The shard's counts of what it asked publishers for again and what came. */
async function uplinkRepairs() {
  const counts = await shardCounters(gatewayUrl, ['publisher_packets_asked_total', 'publisher_packets_repaired_total']);
  return { asked: counts.publisher_packets_asked_total, repaired: counts.publisher_packets_repaired_total };
}

/** What `page` receives of participant `id`, per kind. */
async function received(page, id) {
  const rows = (await inbound(page)).filter((r) => r.participant === id);
  const of = (kind) => rows.find((r) => r.kind === kind) || { packetsReceived: 0, packetsLost: 0, framesDecoded: 0 };
  return { audio: of('audio'), video: of('video') };
}

test('a publisher losing 5 % of her packets is asked for each, and her viewer sees the video whole', async () => {
  const ana = await openPage(cafe, `${gatewayUrl}/?room=cafe-lesson&name=Ana`);
  const cai = await openPage(home, `${gatewayUrl}/?room=cafe-lesson&name=Cai`);
  await waitForPlayingVideo(cai, 'Ana', 40_000);
  const ana_ = await participantId(cai, 'Ana');

  // 15 s, from when Cai's video plays.
  const sentBefore = await sentVideo(ana);
  const before = await received(cai, ana_);
  const shardBefore = await uplinkRepairs();
  await cai.waitForTimeout(15_000);
  const sentAfter = await sentVideo(ana);
  const after = await received(cai, ana_);
  const shardAfter = await uplinkRepairs();
  const sent = Object.fromEntries(Object.keys(sentAfter).map((k) => [k, sentAfter[k] - sentBefore[k]]));
  const shard = { asked: shardAfter.asked - shardBefore.asked, repaired: shardAfter.repaired - shardBefore.repaired };
  const lossOf = (kind) => {
    const got = after[kind].packetsReceived - before[kind].packetsReceived;
    const lost = after[kind].packetsLost - before[kind].packetsLost;
    return { received: got, lost, percent: (100 * lost) / Math.max(1, got + lost) };
  };
  const video = lossOf('video');
  const audio = lossOf('audio');
  const frames = after.video.framesDecoded - before.video.framesDecoded;
  console.log(`uplink: over 15 s Ana sent ${sent.packetsSent} video packets on a link losing ${LOSS * 100} %, `
    + `was asked ${sent.nackCount} times and resent ${sent.retransmittedPacketsSent} (the shard counted ${shard.asked} packets `
    + `asked for, ${shard.repaired} repaired); Cai received ${video.received} `
    + `video packets, ${video.percent.toFixed(2)} % lost, ${frames} frames decoded; her audio ${audio.received} packets, `
    + `${audio.percent.toFixed(2)} % lost (not repaired)`);
  // What this test is about: repairs on simulcast layers' own RTX streams, which only the
  // repaired-rtp-stream-id extension names.
  assert.ok(sentAfter.layersWithRtx >= 2, `Ana sends simulcast with RTX per layer: ${JSON.stringify(sentAfter)}`);
  assert.ok(sent.nackCount > 0 && sent.retransmittedPacketsSent > 0, `Ana heard the shard's NACKs and resent: ${JSON.stringify(sent)}`);
  assert.ok(shard.asked > 0 && shard.repaired > 0, `the shard's metrics show the repairs: ${JSON.stringify(shard)}`);
  assert.ok(video.received > 300 && frames > 100, `Cai's video kept playing: ${JSON.stringify({ video, frames })}`);
  // Without repair Cai would lose about what the link loses; repaired, a packet is lost
  // only when it and every retransmission asked for within a second are.
  assert.ok(video.percent < 1, `Cai's video arrived nearly whole: ${JSON.stringify(video)}`);
  for (const page of [ana, cai]) await page.context().close();
});
