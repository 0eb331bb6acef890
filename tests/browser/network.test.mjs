// Reaching Tutti from a network that lets only HTTPS out (the Abu Dhabi side of the
// lesson in the origin documents): a simulated network (tutti-netsim) with the servers
// in the host's namespace and each participant's Chromium in a namespace of its own.
// The restricted participant's firewall drops all UDP and all TCP except port 443, and
// on the TURN server's 443 it passes only connections that start with a TLS handshake,
// as deep packet inspection does. The other participant's network lets UDP through.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  binary, startProcess, startNetSim, launch, openPage, waitFor, waitForPlayingVideo, waitForAudio,
} from './lib.mjs';

const SECRET = 'network-test-turn-secret';
let netsim;
let coturn;
let gateway;
let restricted;
let open;
let gatewayUrl;
let turnIp;

function tcpAccepts(host, port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port, timeout: 500 });
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
    socket.once('timeout', () => { socket.destroy(); resolve(false); });
  });
}

before(async () => {
  netsim = await startNetSim({
    sites: [
      { name: 'server', host: true, addresses: 2 },
      {
        name: 'abudhabi',
        firewall: { allow_tcp: ['198.18.1.2:443'], allow_tls: ['198.18.1.3:443'] },
      },
      { name: 'seoul' },
    ],
    links: [
      { a: 'abudhabi', b: 'server', delay_ms: 40, jitter_ms: 2 },
      { a: 'seoul', b: 'server', delay_ms: 20, jitter_ms: 2 },
    ],
    seed: 14,
  });
  const [gatewayIp, turn] = netsim.sites.server.addresses;
  turnIp = turn;
  // A certificate for the TURN server's address, as cert-manager or the chart would issue.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tutti-turn-tls-'));
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-days', '1', '-subj', '/CN=turn.tutti.test', '-addext', `subjectAltName=IP:${turnIp}`,
    '-keyout', path.join(dir, 'tls.key'), '-out', path.join(dir, 'tls.crt'),
  ], { stdio: 'ignore' });
  // What Chromium is told to trust: this key, the way a real deployment's certificate
  // chains to a public root. (It refuses TURN over TLS with an untrusted certificate.)
  const trustedKey = execFileSync('sh', ['-c',
    `openssl x509 -pubkey -noout -in '${path.join(dir, 'tls.crt')}' | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`,
  ]).toString().trim();
  coturn = spawn(process.env.TUTTI_TURNSERVER || 'turnserver', [
    '-n', '--no-cli', '--no-dtls', '--fingerprint',
    '--listening-ip', turnIp, '--relay-ip', turnIp,
    '--listening-port=3478', '--tls-listening-port=443',
    `--cert=${path.join(dir, 'tls.crt')}`, `--pkey=${path.join(dir, 'tls.key')}`,
    '--use-auth-secret', `--static-auth-secret=${SECRET}`, '--realm', 'tutti.test',
    '--log-file', 'stdout', '--simple-log', `--pidfile=${path.join(dir, 'coturn.pid')}`,
  ], { stdio: process.env.TUTTI_TEST_VERBOSE ? 'inherit' : 'ignore' });
  await waitFor('coturn to accept TLS connections on 443', () => tcpAccepts(turnIp, 443), (ok) => ok, 10_000);
  const started = await startProcess(binary('tutti-gateway'), [
    '--listen', `${gatewayIp}:443`, '--media-bind', gatewayIp, '--advertise-ip', gatewayIp,
    '--turn-url', `turn:${turnIp}:3478?transport=udp`,
    '--turn-url', `turn:${turnIp}:443?transport=tcp`,
    '--turn-url', `turns:${turnIp}:443?transport=tcp`,
    '--turn-secret', SECRET,
  ], /listening on (http:\/\/\S+)/);
  gateway = started;
  gatewayUrl = started.match[1];
  const secureOrigins = [gatewayUrl];
  const trustedKeys = [trustedKey];
  restricted = await launch({ namespace: netsim.sites.abudhabi.namespace, secureOrigins, trustedKeys });
  open = await launch({ namespace: netsim.sites.seoul.namespace, secureOrigins, trustedKeys });
});

after(async () => {
  for (const browser of [restricted, open]) if (browser) await browser.close();
  if (gateway) await gateway.stop();
  if (coturn) coturn.kill('SIGTERM');
  if (netsim) await netsim.stop();
});

async function selectedPair(page, target) {
  return waitFor(
    `the ${target} connection's selected pair`,
    () => page.evaluate((t) => window.tutti.candidatePair(t), target),
    (p) => p !== null,
  );
}

test('a participant behind a firewall that passes only TLS on 443 holds a lesson through TURN over TLS', async () => {
  const abuDhabi = await openPage(restricted, `${gatewayUrl}/?room=violin-lesson&name=AbuDhabi`);
  const seoul = await openPage(open, `${gatewayUrl}/?room=violin-lesson&name=Seoul`);
  await waitForPlayingVideo(abuDhabi, 'Seoul', 40_000);
  await waitForPlayingVideo(seoul, 'AbuDhabi', 40_000);
  await waitForAudio(abuDhabi, 'Seoul', 40_000);
  await waitForAudio(seoul, 'AbuDhabi', 40_000);
  for (const target of ['publisher', 'subscriber']) {
    const pair = await selectedPair(abuDhabi, target);
    assert.equal(pair.localType, 'relay', `the restricted ${target} must be relayed: ${JSON.stringify(pair)}`);
    assert.equal(pair.relayProtocol, 'tls', `the restricted ${target} reaches TURN over TLS: ${JSON.stringify(pair)}`);
    const direct = await selectedPair(seoul, target);
    assert.notEqual(direct.localType, 'relay', `UDP is open, so the ${target} goes direct: ${JSON.stringify(direct)}`);
    console.log(`${target}: AbuDhabi ${JSON.stringify(pair)}; Seoul ${JSON.stringify(direct)}`);
  }
});

// Relay candidates a page gathers with only `url` as its ICE server (and the gateway's
// credentials for it).
function relayCandidates(page, url) {
  return page.evaluate(async (only) => {
    const server = { ...window.tutti.state.iceServers.find((s) => s.username), urls: [only] };
    const pc = new RTCPeerConnection({ iceServers: [server], iceTransportPolicy: 'relay' });
    pc.createDataChannel('probe');
    const found = [];
    const done = new Promise((resolve) => {
      pc.onicecandidate = (event) => {
        if (!event.candidate) resolve();
        else if (event.candidate.candidate) found.push(event.candidate.candidate);
      };
    });
    await pc.setLocalDescription(await pc.createOffer());
    // Gathering ends by itself once every server has answered or timed out.
    await done;
    pc.close();
    return found;
  }, url);
}

test('the inspecting firewall passes TURN over TLS on 443 but not plain TURN over TCP on the same port', async () => {
  const abuDhabi = await openPage(restricted, `${gatewayUrl}/?room=probe-restricted&name=AbuDhabi`);
  const seoul = await openPage(open, `${gatewayUrl}/?room=probe-open&name=Seoul`);
  for (const page of [abuDhabi, seoul]) {
    await waitFor('ICE servers from the gateway', () => page.evaluate(() => window.tutti.state.iceServers.length), (n) => n > 0);
  }
  const plain = `turn:${turnIp}:443?transport=tcp`;
  const tls = `turns:${turnIp}:443?transport=tcp`;
  // coturn takes both on 443: an open network gets a relay either way.
  assert.ok((await relayCandidates(seoul, plain)).length > 0, 'plain TURN/TCP on 443 from an open network');
  assert.ok((await relayCandidates(seoul, tls)).length > 0, 'TURN/TLS on 443 from an open network');
  assert.deepEqual(await relayCandidates(abuDhabi, plain), [], 'plain TURN/TCP must not pass the inspection');
  assert.ok((await relayCandidates(abuDhabi, tls)).length > 0, 'TURN/TLS passes the inspection');
});
