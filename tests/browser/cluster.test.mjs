// A cluster as separate processes: one real etcd, three shards heartbeating into it, a
// standalone operator placing rooms, two gateways. Two browsers hold a call through
// different gateways; then the shard under them is killed (SIGKILL), and etcd is killed and
// restarted, while the call goes on.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  binary, startProcess, startGateway, launch, openPage, waitFor, waitForPlayingVideo,
  waitForAudio, remoteVideo, bannerCode, startEtcd, startClusterShard,
} from './lib.mjs';

const ADMIN_TOKEN = 'cluster-admin-token-0123456789abcdef';
const SIGNAL_TOKEN = 'cluster-signal-token-0123456789abcdef';
const SESSION_SECRET = 'cluster-session-secret-0123456789abcdef';
const LEASE_TTL = 3;

let etcd;
let store;
const shards = [];
let operator;
let gateways = [];
let browser;
let seoul;
let abuDhabi;

/** The names of the pipelines a shard hosts, through its admin API. */
async function pipelines(shard) {
  const response = await fetch(`${shard.http}/v1/pipelines`, {
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  return (await response.json()).map((p) => p.name);
}

async function shardHosting(room, candidates) {
  return waitFor(`a shard hosting ${room}`, async () => {
    for (const shard of candidates) {
      if (shard.child.exitCode === null && (await pipelines(shard).catch(() => [])).includes(room)) return shard;
    }
    return null;
  }, (found) => found !== null);
}

function gatewayArgs() {
  return ['--store', store, '--shard-signal-token', SIGNAL_TOKEN, '--session-secret', SESSION_SECRET];
}

before(async () => {
  etcd = await startEtcd();
  store = etcd.url;
  for (const id of ['shard-a', 'shard-b', 'shard-c']) {
    shards.push(await startClusterShard(id, { store, adminToken: ADMIN_TOKEN, signalToken: SIGNAL_TOKEN, leaseTtl: LEASE_TTL }));
  }
  operator = await startProcess(binary('tutti-operator'), [
    '--standalone', '--store', store, '--admin-token', ADMIN_TOKEN, '--listen', '127.0.0.1:0', '--gc-period', '5',
  ], /tutti-operator: standalone/);
  gateways = [await startGateway(gatewayArgs()), await startGateway(gatewayArgs())];
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  for (const gateway of gateways) await gateway.stop();
  if (operator) await operator.stop();
  for (const shard of shards) await shard.kill();
  if (etcd) {
    await etcd.kill();
    etcd.remove();
  }
});

test('two participants on different gateways share a room on one shard', async () => {
  seoul = await openPage(browser, `${gateways[0].url}/?room=duet&name=Seoul`);
  abuDhabi = await openPage(browser, `${gateways[1].url}/?room=duet&name=AbuDhabi`);
  await waitForPlayingVideo(abuDhabi, 'Seoul');
  await waitForPlayingVideo(seoul, 'AbuDhabi');
  await waitForAudio(seoul, 'AbuDhabi');
  const hosts = [];
  for (const shard of shards) if ((await pipelines(shard)).includes('duet')) hosts.push(shard.id);
  assert.equal(hosts.length, 1, `one shard hosts the room: ${hosts}`);
});

test('killing the shard under a call moves the room and media comes back by itself', async () => {
  const doomed = await shardHosting('duet', shards);
  const seoulId = await seoul.evaluate(() => window.tutti.state.me);
  const killedAt = Date.now();
  await doomed.kill();
  // Both pages rejoin (resuming as themselves) on the shard the operator moves the room to.
  await waitFor('Seoul to rejoin', () => seoul.evaluate(() => window.tutti.state.joined), (j) => j, 30_000);
  await waitFor('Abu Dhabi to rejoin', () => abuDhabi.evaluate(() => window.tutti.state.joined), (j) => j, 30_000);
  await waitForPlayingVideo(abuDhabi, 'Seoul', 30_000);
  await waitForPlayingVideo(seoul, 'AbuDhabi', 30_000);
  const restoredMs = Date.now() - killedAt;
  console.log(`shard killed -> media restored both ways in ${restoredMs} ms (lease TTL ${LEASE_TTL} s)`);
  const survivors = shards.filter((s) => s !== doomed);
  const host = await shardHosting('duet', survivors);
  assert.notEqual(host.id, doomed.id);
  assert.equal(await seoul.evaluate(() => window.tutti.state.me), seoulId, 'Seoul came back as the same participant');
  await waitForAudio(abuDhabi, 'Seoul');
});

test('with etcd down the call goes on and joins fail clearly; after it returns they work', async () => {
  const ready = async (gateway) => (await fetch(`${gateway.url}/readyz`)).status;
  await etcd.kill();
  await waitFor('the gateways to report not ready', () => Promise.all(gateways.map(ready)),
    (codes) => codes.every((c) => c === 503));
  // The established call keeps flowing without etcd.
  await waitForPlayingVideo(abuDhabi, 'Seoul');
  await waitForPlayingVideo(seoul, 'AbuDhabi');
  // A newcomer is told joins are paused.
  const late = await openPage(browser, `${gateways[1].url}/?room=duet&name=Latecomer`);
  const code = await waitFor('the refusal', () => bannerCode(late), (c) => c !== null);
  assert.equal(code, 'unavailable');

  await etcd.start();
  await waitFor('the gateways to be ready again', () => Promise.all(gateways.map(ready)),
    (codes) => codes.every((c) => c === 200), 30_000);
  await late.goto(`${gateways[1].url}/?room=duet&name=Latecomer`);
  await waitForPlayingVideo(late, 'Seoul');
  await waitForPlayingVideo(seoul, 'Latecomer');
  await waitForPlayingVideo(abuDhabi, 'Seoul');
  const tile = await remoteVideo(late, 'AbuDhabi');
  assert.ok(tile, 'the latecomer sees everyone');
});
