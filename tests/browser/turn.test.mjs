// The web client through TURN: a real coturn with the REST API secret, and browsers that
// may only use relay candidates (`?relay=1`), as on a network that lets nothing else out.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { startGateway, launch, openPage, waitFor, waitForPlayingVideo, waitForAudio } from './lib.mjs';

const SECRET = 'browser-turn-secret';
let coturn;
let turnPort;
let gateway;
let browser;

async function freeUdpPort() {
  const socket = dgram.createSocket('udp4');
  await new Promise((resolve) => socket.bind(0, '127.0.0.1', resolve));
  const { port } = socket.address();
  await new Promise((resolve) => socket.close(resolve));
  return port;
}

// Resolves once coturn answers a STUN Binding request.
async function stunAnswers(port) {
  const socket = dgram.createSocket('udp4');
  const request = Buffer.concat([Buffer.from([0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]), Buffer.from('tutti-ready!')]);
  try {
    return await waitFor('coturn to answer STUN', () => new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), 200);
      socket.once('message', (msg) => { clearTimeout(timer); resolve(msg[0] === 1 && msg[1] === 1); });
      socket.send(request, port, '127.0.0.1');
    }), (ok) => ok, 10_000);
  } finally {
    socket.close();
  }
}

before(async () => {
  turnPort = await freeUdpPort();
  coturn = spawn(process.env.TUTTI_TURNSERVER || 'turnserver', [
    '-n', '--no-cli', '--no-tls', '--no-dtls', '--fingerprint',
    '--listening-ip', '127.0.0.1', '--relay-ip', '127.0.0.1', `--listening-port=${turnPort}`,
    '--use-auth-secret', `--static-auth-secret=${SECRET}`, '--realm', 'tutti.test',
    '--allow-loopback-peers', '--log-file', 'stdout', '--simple-log',
    `--pidfile=/tmp/tutti-coturn-${turnPort}.pid`,
  ], { stdio: 'ignore' });
  await stunAnswers(turnPort);
  gateway = await startGateway([
    '--turn-url', `turn:127.0.0.1:${turnPort}?transport=udp`,
    '--turn-secret', SECRET,
  ]);
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  if (gateway) await gateway.stop();
  if (coturn) coturn.kill('SIGTERM');
});

test('two relay-only browsers hold a call through coturn', async () => {
  const a = await openPage(browser, `${gateway.url}/?room=remote-lesson&name=Seoul&relay=1`);
  const b = await openPage(browser, `${gateway.url}/?room=remote-lesson&name=AbuDhabi&relay=1`);
  await waitForPlayingVideo(b, 'Seoul');
  await waitForPlayingVideo(a, 'AbuDhabi');
  await waitForAudio(a, 'AbuDhabi');
  for (const page of [a, b]) {
    for (const target of ['publisher', 'subscriber']) {
      const pair = await waitFor(
        `the ${target} connection's selected pair`,
        () => page.evaluate((t) => window.tutti.candidatePair(t), target),
        (p) => p !== null,
      );
      assert.equal(pair.localType, 'relay', `${target} media must flow through TURN`);
    }
  }
});
