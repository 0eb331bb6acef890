// Shared helpers of the browser tests: the gateway as a child process on free ports,
// headless Chromium with fake camera and microphone, and waiting on what a participant
// observes (decoded frames, audio arriving), never on fixed sleeps.

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';
import fs from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, '..', '..');

export const CHROMIUM = process.env.TUTTI_CHROMIUM || '/usr/bin/chromium';

const BASE_FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-dev-shm-usage',
  '--use-fake-device-for-media-stream',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--autoplay-policy=no-user-gesture-required',
  '--auto-select-desktop-capture-source=Entire screen',
];

/** A binary of this workspace, built by `cargo build`. */
export function binary(name) {
  return process.env[`TUTTI_${name.toUpperCase().replace('-', '_')}_BIN`]
    || path.join(repo, 'target', 'debug', name);
}

/**
 * Starts a program and resolves once a line of its standard output matches `ready`
 * (with the match). `stop()` sends SIGTERM and waits; `kill()` sends SIGKILL.
 */
export async function startProcess(program, args, ready, env = {}) {
  const child = spawn(program, args, {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stderr = [];
  const logged = [];
  child.stderr.on('data', (chunk) => {
    stderr.push(chunk.toString());
    if (process.env.TUTTI_TEST_VERBOSE) process.stderr.write(chunk);
  });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const match = await new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(
      () => reject(new Error(`${path.basename(program)} did not start: ${stderr.join('')}`)),
      30_000,
    );
    lines.on('line', (line) => {
      // Logs go to stdout: the last lines are kept for failure messages.
      logged.push(line);
      if (logged.length > 5000) logged.splice(0, 1000);
      if (process.env.TUTTI_TEST_VERBOSE) process.stderr.write(`[${path.basename(program)}] ${line}\n`);
      const found = line.match(ready);
      if (found) {
        clearTimeout(timer);
        resolve(found);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${path.basename(program)} exited with ${code}: ${stderr.join('')}`));
    });
  });
  return {
    match,
    child,
    /** The process's last log lines (stdout) and its stderr, for a failure message. */
    log: () => `${logged.join('\n')}\n${stderr.join('')}`,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      await exited;
    },
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Starts `tutti-gateway` on a free port; resolves once it listens. */
export async function startGateway(extraArgs = [], env = {}) {
  const args = ['--listen', '127.0.0.1:0', '--media-bind', '127.0.0.1', '--advertise-ip', '127.0.0.1', ...extraArgs];
  const gateway = await startProcess(binary('tutti-gateway'), args, /listening on (http:\/\/\S+)/, env);
  return { url: gateway.match[1], child: gateway.child, stop: gateway.stop, kill: gateway.kill };
}

/**
 * Launches Chromium. `fakeUi` auto-accepts camera, microphone and screen prompts.
 * `namespace` runs it inside a network namespace of a simulated network (see
 * `startNetSim`); `secureOrigins` are plain-HTTP origins it treats as secure, so that
 * pages served from a simulated server's address may use the camera; `trustedKeys` are
 * base64 SHA-256 hashes of public keys whose certificates it accepts (a test's own
 * certificates, as a real one would be accepted).
 */
export async function launch({ fakeUi = true, namespace, secureOrigins = [], trustedKeys = [] } = {}) {
  const args = [...BASE_FLAGS];
  if (fakeUi) args.push('--use-fake-ui-for-media-stream');
  if (trustedKeys.length) args.push(`--ignore-certificate-errors-spki-list=${trustedKeys.join(',')}`);
  if (secureOrigins.length) args.push(`--unsafely-treat-insecure-origin-as-secure=${secureOrigins.join(',')}`);
  let executablePath = CHROMIUM;
  if (namespace) {
    // Playwright talks to Chromium over inherited pipes, which `ip netns exec` keeps.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tutti-chromium-'));
    executablePath = path.join(dir, 'chromium-in-namespace');
    fs.writeFileSync(executablePath, `#!/bin/sh\nexec ip netns exec ${namespace} ${CHROMIUM} "$@"\n`, { mode: 0o755 });
  }
  return chromium.launch({ executablePath, args });
}

/**
 * Builds a simulated network with `tutti-netsim` (spec: tests/src/netsim/mod.rs) and
 * resolves with its sites by name (`namespace`, `addresses`). `setLink(link)` changes a
 * path while it runs; `stop()` removes it; if this process dies, tutti-netsim sees its
 * stdin close and removes it as well.
 */
export async function startNetSim(spec) {
  const child = spawn(binary('tutti-netsim'), [JSON.stringify(spec)], { stdio: ['pipe', 'pipe', 'pipe'] });
  const stderr = [];
  const logged = [];
  child.stderr.on('data', (chunk) => stderr.push(chunk.toString()));
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const lines = createInterface({ input: child.stdout });
  const line = await new Promise((resolve, reject) => {
    lines.once('line', resolve);
    child.on('exit', (code) => reject(new Error(`tutti-netsim exited with ${code}: ${stderr.join('')}`)));
  });
  const sites = Object.fromEntries(JSON.parse(line).sites.map((site) => [site.name, site]));
  return {
    sites,
    /** Changes what the path between `link.a` and `link.b` does, as in the spec's links. */
    async setLink(link) {
      const answer = new Promise((resolve) => lines.once('line', resolve));
      child.stdin.write(`${JSON.stringify(link)}\n`);
      const reply = JSON.parse(await answer);
      if (reply.error) throw new Error(`tutti-netsim: ${reply.error}`);
    },
    async stop() {
      if (child.exitCode !== null) return;
      child.stdin.end();
      await exited;
    },
  };
}

/** Opens a page in a fresh context (its own profile, like another person's browser). */
export async function openPage(browser, url, permissions) {
  const context = await browser.newContext(permissions ? { permissions } : {});
  const page = await context.newPage();
  page.on('pageerror', (err) => console.error(`[page error] ${err.message}`));
  if (process.env.TUTTI_TEST_VERBOSE) {
    page.on('console', (msg) => console.error(`[console] ${msg.text()}`));
  }
  await page.goto(url);
  return page;
}

/** Polls `probe` until `accept(value)` holds; fails with the last value after `timeoutMs`. */
export async function waitFor(what, probe, accept, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (accept(last)) return last;
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}; last seen: ${JSON.stringify(last)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** The remote video of `participantName` on `page`: size, playback position, frames. */
export function remoteVideo(page, participantName) {
  return page.evaluate((name) => {
    const tile = [...document.querySelectorAll('.tile:not(.local)')].find((t) => t.dataset.name === name);
    if (!tile) return null;
    const video = tile.querySelector('video');
    const quality = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : {};
    return {
      width: video.videoWidth,
      height: video.videoHeight,
      currentTime: video.currentTime,
      paused: video.paused,
      frames: quality.totalVideoFrames || 0,
      participant: tile.dataset.participant,
      classes: tile.className,
    };
  }, participantName);
}

/** Waits until `page` plays `participantName`'s video: frames decoded, time advancing. */
export async function waitForPlayingVideo(page, participantName, timeoutMs = 25_000) {
  const first = await waitFor(
    `${participantName}'s video on ${await page.title()}`,
    () => remoteVideo(page, participantName),
    (v) => v && v.width > 0 && v.height > 0 && v.currentTime > 0,
    timeoutMs,
  );
  const later = await waitFor(
    `${participantName}'s video to keep playing`,
    () => remoteVideo(page, participantName),
    (v) => v && v.currentTime > first.currentTime + 0.5 && v.frames > first.frames,
    timeoutMs,
  );
  return later;
}

/**
 * A page from `browser` whose camera goes out in `codec` (`VP9`, `AV1`): that codec put
 * first among its video codecs, as an app calling `setCodecPreferences` would.
 */
export async function openPageWithCodec(browser, url, codec) {
  const context = await browser.newContext();
  await context.addInitScript((mime) => {
    const addTransceiver = RTCPeerConnection.prototype.addTransceiver;
    RTCPeerConnection.prototype.addTransceiver = function preferCodec(trackOrKind, init) {
      const transceiver = addTransceiver.call(this, trackOrKind, init);
      const kind = typeof trackOrKind === 'string' ? trackOrKind : trackOrKind.kind;
      if (kind === 'video') {
        const { codecs } = RTCRtpSender.getCapabilities('video');
        const first = codecs.filter((c) => c.mimeType.toLowerCase() === mime);
        transceiver.setCodecPreferences([...first, ...codecs.filter((c) => !first.includes(c))]);
      }
      return transceiver;
    };
  }, `video/${codec.toLowerCase()}`);
  const page = await context.newPage();
  page.on('pageerror', (err) => console.error(`[page error] ${err.message}`));
  await page.goto(url);
  return page;
}

/** Inbound RTP as the page's subscriber connection reports it, per sending participant. */
export function inbound(page) {
  return page.evaluate(() => window.tutti.inboundStats());
}

/** The participant id the page's tile for `participantName` belongs to. */
export async function participantId(page, participantName) {
  const video = await waitFor(
    `a tile for ${participantName}`,
    () => remoteVideo(page, participantName),
    (v) => v !== null,
  );
  return video.participant;
}

/** Waits until `page` receives `participantName`'s audio: packets and energy growing. */
export async function waitForAudio(page, participantName, timeoutMs = 25_000) {
  const id = await participantId(page, participantName);
  const audioOf = async () => (await inbound(page)).find((r) => r.kind === 'audio' && r.participant === id);
  const first = await waitFor(
    `${participantName}'s audio`,
    audioOf,
    (r) => r && r.packetsReceived > 0 && r.totalAudioEnergy > 0,
    timeoutMs,
  );
  return waitFor(
    `${participantName}'s audio to keep arriving`,
    audioOf,
    (r) => r && r.packetsReceived > first.packetsReceived + 20 && r.totalAudioEnergy > first.totalAudioEnergy,
    timeoutMs,
  );
}

/** Chat lines the page shows: sender id, recipient id (direct messages) and text. */
export function chatLines(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll('#messages li:not(.system)')].map((li) => ({
      from: li.dataset.from,
      to: li.dataset.to || null,
      text: li.querySelector('.text').textContent,
    })),
  );
}

/** The error banner's code, if shown. */
export function bannerCode(page) {
  return page.evaluate(() => {
    const banner = document.querySelector('#banner');
    return banner.classList.contains('hidden') ? null : banner.dataset.code || null;
  });
}

/**
 * What a call page shows, for a failure message: whether it is joined or rejoining, its
 * status line, error banner, notices and the participants it knows.
 */
export function describePage(page) {
  return page.evaluate(() => {
    const banner = document.querySelector('#banner');
    return {
      joined: window.tutti.state.joined,
      reconnecting: window.tutti.state.reconnecting,
      status: document.querySelector('#status')?.textContent ?? null,
      banner: banner && !banner.classList.contains('hidden') ? banner.textContent.trim() : null,
      notices: [...document.querySelectorAll('#messages li.system')].map((li) => li.textContent).slice(-10),
      participants: window.tutti.participants(),
    };
  }).catch((err) => `page not readable: ${err.message}`);
}

export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A real etcd with its own data directory; `kill()` and `start()` again keep the data. */
export async function startEtcd() {
  const client = await freePort();
  const peer = await freePort();
  const data = fs.mkdtempSync(path.join(os.tmpdir(), 'tutti-etcd-'));
  const server = {
    url: `etcd://127.0.0.1:${client}`,
    child: null,
    async start() {
      this.child = spawn(process.env.TUTTI_ETCD || 'etcd', [
        '--name', 'cluster-test', '--data-dir', data,
        '--listen-client-urls', `http://127.0.0.1:${client}`, '--advertise-client-urls', `http://127.0.0.1:${client}`,
        '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`,
        '--initial-cluster', `cluster-test=http://127.0.0.1:${peer}`, '--log-level', 'error',
      ], { stdio: 'ignore' });
      await waitFor('etcd to be healthy', async () => {
        try {
          const response = await fetch(`http://127.0.0.1:${client}/health`);
          return (await response.text()).includes('true');
        } catch {
          return false;
        }
      }, (healthy) => healthy, 15_000);
    },
    async kill() {
      const exited = new Promise((resolve) => this.child.on('exit', resolve));
      this.child.kill('SIGKILL');
      await exited;
    },
    remove() {
      fs.rmSync(data, { recursive: true, force: true });
    },
  };
  await server.start();
  return server;
}

/** A `tutti-sfu` process heartbeating into `store` as shard `id`. */
export async function startClusterShard(id, { store, adminToken, signalToken, leaseTtl }) {
  const shard = await startProcess(binary('tutti-sfu'), [
    '--http', '127.0.0.1:0', '--udp', '127.0.0.1:0', '--advertise-ip', '127.0.0.1',
    '--admin-token', adminToken, '--signal-token', signalToken,
    '--store', store, '--shard-id', id, '--heartbeat-ttl', String(leaseTtl),
  ], /tutti-sfu: http:\/\/(\S+) /);
  shard.id = id;
  shard.http = `http://${shard.match[1]}`;
  return shard;
}

/**
 * Counters of the gateway's local shards from its /metrics, by name (`tutti_sfu_<name>`,
 * the first shard's series); one not exposed is NaN.
 */
export async function shardCounters(gatewayUrl, names) {
  const text = await fetch(`${gatewayUrl}/metrics`).then((r) => r.text());
  return Object.fromEntries(names.map((name) => {
    const found = text.match(new RegExp(`^tutti_sfu_${name}\\{[^}]*\\} (\\d+)`, 'm'));
    return [name, found ? Number(found[1]) : NaN];
  }));
}

/** Frames each simulcast layer of `page`'s camera has encoded, by rid, and which are on. */
export function encodedLayers(page) {
  return page.evaluate(async () => {
    const sender = window.tutti.state.videoSender;
    if (!sender) return null;
    const active = Object.fromEntries(sender.getParameters().encodings.map((e) => [e.rid, e.active !== false]));
    const frames = {};
    (await sender.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') frames[s.rid] = s.framesEncoded || 0;
    });
    return { active, frames };
  });
}

/** Frames of each layer encoded over `ms`, by rid. */
export async function encodedOver(page, ms) {
  const before = await encodedLayers(page);
  await new Promise((resolve) => setTimeout(resolve, ms));
  const after = await encodedLayers(page);
  const grown = {};
  for (const [rid, frames] of Object.entries(after.frames)) grown[rid] = frames - (before.frames[rid] || 0);
  return { active: after.active, grown };
}

/**
 * Starts moto's S3-compatible server (from the venv the test script makes; `TUTTI_PYTHON`
 * names its Python) on a free loopback port, with the bucket `bucket`. moto does not
 * check signatures, so objects are read back here without any.
 */
export async function startObjectStore(bucket) {
  const port = await new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port: free } = server.address();
      server.close(() => resolve(free));
    });
  });
  const python = process.env.TUTTI_PYTHON || path.join(repo, '.venv', 'bin', 'python3');
  const child = spawn(python, ['-m', 'moto.server', '-H', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' });
  const endpoint = `http://127.0.0.1:${port}`;
  await waitFor('moto to create a bucket', () => fetch(`${endpoint}/${bucket}`, { method: 'PUT' }).then((r) => r.status).catch(() => 0), (status) => status === 200, 30_000);
  return {
    endpoint,
    /** Keys under `prefix`, in order, with their sizes. */
    async list(prefix) {
      const xml = await (await fetch(`${endpoint}/${bucket}?list-type=2&prefix=${encodeURIComponent(prefix)}`)).text();
      return [...xml.matchAll(/<Key>([^<]*)<\/Key>.*?<Size>(\d+)<\/Size>/gs)].map((m) => ({ key: m[1], size: Number(m[2]) }));
    },
    /** The object `key`'s bytes. */
    async get(key) {
      // moto refuses anonymous reads but checks no signature: any signed-looking header.
      const authorization = 'AWS4-HMAC-SHA256 Credential=tutti-test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0';
      const response = await fetch(`${endpoint}/${bucket}/${key}`, { headers: { authorization } });
      if (!response.ok) throw new Error(`${key}: ${response.status}`);
      return Buffer.from(await response.arrayBuffer());
    },
    stop: () => child.kill('SIGKILL'),
  };
}
