// A violin lesson with the music profile in real browsers, and what it costs in latency:
// the microphone as captured, the Opus parameters negotiated, the bitrate actually sent,
// and (printed as benchmark figures, never asserted on time) the receiver's jitter-buffer
// delay and the click-to-ear latency through the shard against a direct browser-to-browser
// call measured in the same run, for music and for speech.
//
// The fake microphone plays a generated stereo WAV: a bowed A4 with its harmonics on the
// left, a fifth above on the right, so stereo and a music bitrate have something to carry.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';
import { installLab, pairClicks, median, fmt } from './audio-lab.mjs';
import {
  CHROMIUM, repo, startProcess, openPage, waitFor, waitForPlayingVideo, waitForAudio,
  participantId,
} from './lib.mjs';

const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-dev-shm-usage',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
  '--no-first-run',
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
];

/** A 2 s stereo 48 kHz WAV: harmonic-rich tones, different in each channel. */
function writeMusicWav(file) {
  const rate = 48_000;
  const samples = rate * 2;
  const data = Buffer.alloc(samples * 4);
  const tone = (f, t) => [1, 0.5, 0.33, 0.25, 0.2, 0.16]
    .reduce((sum, a, k) => sum + a * Math.sin(2 * Math.PI * f * (k + 1) * t), 0);
  for (let i = 0; i < samples; i += 1) {
    const t = i / rate;
    const vibrato = 1 + 0.004 * Math.sin(2 * Math.PI * 5.5 * t);
    data.writeInt16LE(Math.round(5000 * tone(440 * vibrato, t)), i * 4);
    data.writeInt16LE(Math.round(5000 * tone(660 * vibrato, t)), i * 4 + 2);
  }
  const header = Buffer.alloc(44);
  header.write('RIFF', 0);
  header.writeUInt32LE(36 + data.length, 4);
  header.write('WAVEfmt ', 8);
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(2, 22); // stereo
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 4, 28);
  header.writeUInt16LE(4, 32);
  header.writeUInt16LE(16, 34);
  header.write('data', 36);
  header.writeUInt32LE(data.length, 40);
  fs.writeFileSync(file, Buffer.concat([header, data]));
}

/** The gateway binary: the release build the run command makes, when it is there. */
function gatewayBinary() {
  const release = path.join(repo, 'target', 'release', 'tutti-gateway');
  return process.env.TUTTI_TUTTI_GATEWAY_BIN
    || (fs.existsSync(release) ? release : path.join(repo, 'target', 'debug', 'tutti-gateway'));
}

let gateway;
let browser;
let wavDir;
const pages = [];

async function page(url) {
  // The measuring tools load AudioWorklet modules from blob: URLs, which the gateway's
  // Content-Security-Policy (scripts from itself only) rightly refuses to the app.
  const context = await browser.newContext({ bypassCSP: true });
  const p = await context.newPage();
  p.on('pageerror', (err) => console.error(`[page error] ${err.message}`));
  if (process.env.TUTTI_TEST_VERBOSE) p.on('console', (m) => console.error(`[console] ${m.text()}`));
  await p.goto(url);
  pages.push(p);
  return p;
}

before(async () => {
  const bin = gatewayBinary();
  console.log(`music: gateway ${path.relative(repo, bin)}`);
  wavDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tutti-music-'));
  // A declared quartet room with its own tuning; other rooms are created on first join.
  const rooms = path.join(wavDir, 'rooms.toml');
  fs.writeFileSync(rooms, '[[rooms]]\nname = "quartet"\naudio = "music"\naudioBitrate = 192000\naudioPtime = 10\n');
  const started = await startProcess(
    bin,
    ['--listen', '127.0.0.1:0', '--media-bind', '127.0.0.1', '--advertise-ip', '127.0.0.1', '--shards', '2', '--rooms', rooms],
    /listening on (http:\/\/\S+)/,
  );
  gateway = { url: started.match[1], stop: started.stop };
  const wav = path.join(wavDir, 'violin.wav');
  writeMusicWav(wav);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [...FLAGS, `--use-file-for-fake-audio-capture=${wav}`],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (gateway) await gateway.stop();
  if (wavDir) fs.rmSync(wavDir, { recursive: true, force: true });
});

/** The page's outbound audio: bytes sent and the codec's format line. */
function outboundAudio(p) {
  return p.evaluate(async () => {
    const pc = window.tutti.state.pub;
    if (!pc) return null;
    const report = await pc.getStats();
    let out = null;
    report.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'audio') out = s;
    });
    if (!out) return null;
    const codec = out.codecId ? report.get(out.codecId) : null;
    return {
      bytesSent: out.bytesSent,
      packetsSent: out.packetsSent,
      at: out.timestamp,
      mimeType: codec?.mimeType,
      fmtp: codec?.sdpFmtpLine || '',
      channels: codec?.channels,
    };
  });
}

/** kbit/s of audio the page sends, over `seconds`. */
async function audioBitrate(p, seconds) {
  const a = await waitFor('outbound audio', () => outboundAudio(p), (s) => s && s.bytesSent > 0);
  await p.waitForTimeout(seconds * 1000);
  const b = await outboundAudio(p);
  return ((b.bytesSent - a.bytesSent) * 8) / (b.at - a.at);
}

test('a music lesson by deep link sends unprocessed stereo Opus at the room bitrate', async () => {
  const teacher = await page(`${gateway.url}/?room=violin&name=Teacher&audio=music`);
  const student = await page(`${gateway.url}/?room=violin&name=Student&audio=music`);
  await waitForPlayingVideo(student, 'Teacher');
  await waitForPlayingVideo(teacher, 'Student');
  await waitForAudio(student, 'Teacher');
  await waitForAudio(teacher, 'Student');

  const settings = await teacher.evaluate(() => window.tutti.state.micTrack.getSettings());
  console.log(`music: microphone settings ${JSON.stringify(settings)}`);
  assert.equal(settings.echoCancellation, false);
  assert.equal(settings.noiseSuppression, false);
  assert.equal(settings.autoGainControl, false);
  assert.equal(settings.channelCount, 2, 'stereo from a stereo device');

  const profile = await teacher.evaluate(() => window.tutti.state.audio);
  assert.equal(profile.profile, 'music');
  const note = await teacher.evaluate(() => document.querySelector('#audio-profile').textContent);
  assert.match(note, /headphones/i);

  // What the shard answered, and what the browser's sender actually uses.
  const answer = await teacher.evaluate(() => window.tutti.state.pub.remoteDescription.sdp);
  const opusFmtp = answer.split(/\r?\n/).find((l) => /^a=fmtp:\d+ .*maxaveragebitrate/.test(l));
  assert.ok(opusFmtp, `the shard's answer tunes Opus:\n${answer}`);
  for (const param of ['stereo=1', 'sprop-stereo=1', 'maxaveragebitrate=128000', 'usedtx=0', 'useinbandfec=1']) {
    assert.ok(opusFmtp.includes(param), `${param} in ${opusFmtp}`);
  }
  const out = await outboundAudio(teacher);
  console.log(`music: sending ${out.mimeType} ${out.channels} ch, fmtp ${out.fmtp}`);
  const encoding = await teacher.evaluate(() => window.tutti.state.audioSender.getParameters().encodings[0]);
  assert.equal(encoding.maxBitrate, 128000, 'the sender is set to the room bitrate');
  // The student was offered stereo and answered that it decodes stereo.
  const studentAnswer = await student.evaluate(() => window.tutti.state.sub.localDescription.sdp);
  assert.match(studentAnswer, /a=fmtp:\d+ [^\r\n]*stereo=1/);
  // Video is sent with a zero playout delay, which the student's browser accepted.
  assert.match(studentAnswer, /a=extmap:\d+ http:\/\/www\.webrtc\.org\/experiments\/rtp-hdrext\/playout-delay/);

  const kbps = await audioBitrate(teacher, 5);
  console.log(`music: teacher sends ${kbps.toFixed(1)} kbit/s of audio (room bitrate 128, RED included)`);
  assert.ok(kbps >= 96, `a music bitrate is actually sent: ${kbps.toFixed(1)} kbit/s`);

  // Redundancy: Chromium offers RED (its statistics name the Opus inside), the shard
  // answers preferring it, the track is published as RED, and the student's browser takes
  // it as it is.
  assert.match(answer, /m=audio \d+ [A-Z/]+ 63 /, 'the shard answered RED first');
  const teacherId = await participantId(student, 'Teacher');
  const announced = await student.evaluate(
    (id) => [...window.tutti.state.participants.get(id).tracks.values()].find((t) => t.kind === 'audio')?.codec,
    teacherId,
  );
  assert.equal(announced, 'audio/red', 'the teacher publishes RED');
  assert.match(studentAnswer, /m=audio \d+ [A-Z/]+ 63 /, 'the student accepts RED first');

  for (const p of [teacher, student]) await p.context().close();
});

test('a listener without RED hears the Opus inside it', async () => {
  // A recital: one player sends RED; aiortc, which does not speak RED, listens.
  const player = await page(`${gateway.url}/?room=recital&name=Player&audio=music`);
  await waitFor('the player publishing', () => outboundAudio(player), (s) => s && s.packetsSent > 50);
  const python = process.env.TUTTI_PYTHON || path.join(repo, '.venv', 'bin', 'python3');
  const { stdout } = await promisify(execFile)(python, [
    path.join(repo, 'tests', 'aiortc', 'peer.py'), 'subscribe', '--gateway',
    '--url', `${gateway.url.replace('http', 'ws')}/v1/ws`, '--room', 'recital', '--id', 'aiortc',
    '--name', 'Listener', '--frames', '0', '--audio-seconds', '4', '--timeout', '40',
  ], { timeout: 60_000 });
  const listener = JSON.parse(stdout.trim().split('\n').pop());
  console.log(`music: aiortc listener ${JSON.stringify({ packets: listener.audio_packets, missing: listener.audio_missing, decoded: listener.audio_frames })}`);
  assert.ok(listener.audio_packets >= 150, `aiortc heard the teacher: ${stdout}`);
  assert.equal(listener.audio_missing, 0, stdout);
  assert.ok(listener.audio_frames >= 150, `aiortc decoded the Opus: ${stdout}`);
  assert.equal(listener.audio_channels, 2, 'in stereo');
  await player.context().close();
});

test('a declared music room sends its bitrate in 10 ms frames; devices can be switched', async () => {
  // The link asks for speech, but the declared room keeps its own profile.
  const viola = await page(`${gateway.url}/?room=quartet&name=Viola&audio=speech`);
  const cello = await page(`${gateway.url}/?room=quartet&name=Cello`);
  await waitForAudio(cello, 'Viola');
  const profile = await viola.evaluate(() => window.tutti.state.audio);
  assert.deepEqual(profile, { profile: 'music', bitrate: 192000, ptime: 10 });
  const answer = await viola.evaluate(() => window.tutti.state.pub.remoteDescription.sdp);
  assert.match(answer, /a=ptime:10\r\n/);
  assert.match(answer, /maxaveragebitrate=192000/);
  const a = await waitFor('outbound audio', () => outboundAudio(viola), (s) => s && s.packetsSent > 0);
  await viola.waitForTimeout(3000);
  const b = await outboundAudio(viola);
  const perSecond = ((b.packetsSent - a.packetsSent) * 1000) / (b.at - a.at);
  console.log(`music: a 10 ms room sends ${perSecond.toFixed(0)} audio packets a second`);
  assert.ok(perSecond > 80, `10 ms frames: ${perSecond.toFixed(0)} packets/s`);

  // The device pickers list the fake devices; choosing another microphone keeps the
  // sound flowing, captured for music.
  const mics = await viola.evaluate(() => [...document.querySelectorAll('#pick-mic option')].map((o) => o.value));
  assert.ok(mics.length >= 1, 'microphones listed');
  const other = mics[mics.length - 1];
  await viola.click('.devices summary');
  await viola.selectOption('#pick-mic', other);
  await waitFor('the chosen microphone', () => viola.evaluate(() => window.tutti.state.micTrack.getSettings()),
    (s) => s.deviceId === other && s.echoCancellation === false);
  await waitForAudio(cello, 'Viola');
  for (const p of [viola, cello]) await p.context().close();
});

test('a speech room keeps the browser processing and its own bitrate', async () => {
  const a = await page(`${gateway.url}/?room=talk&name=Anna`);
  const b = await page(`${gateway.url}/?room=talk&name=Ben`);
  await waitForAudio(b, 'Anna');
  const settings = await a.evaluate(() => window.tutti.state.micTrack.getSettings());
  assert.equal(settings.echoCancellation, true);
  assert.equal(settings.noiseSuppression, true);
  const answer = await a.evaluate(() => window.tutti.state.pub.remoteDescription.sdp);
  assert.doesNotMatch(answer, /maxaveragebitrate/);
  const kbps = await audioBitrate(a, 5);
  console.log(`music: a speech room sends ${kbps.toFixed(1)} kbit/s of audio`);
  for (const p of [a, b]) await p.context().close();
});

// ---------------------------------------------------------------- latency, shard vs direct

/** A direct call from `sender` to `receiver` pages, music-tuned like a room or not. */
async function directCall(sender, receiver, music) {
  await installLab(sender);
  await installLab(receiver);
  const offer = await sender.evaluate((m) => window.lab.directOffer(m), music);
  const answer = await receiver.evaluate(([o, m]) => window.lab.directAnswer(o, m), [offer, music]);
  await sender.evaluate((a) => window.lab.directComplete(a), answer);
  await waitFor('direct audio', () => receiver.evaluate(() => window.lab.jitter()), (j) => j && j.emitted > 4800);
}

/**
 * Average audio jitter-buffer delay (ms) at the receiver over `ms`; when the buffer emitted
 * nothing in that time, the stats read at both ends are noted in `silent`.
 */
async function jitterWindow(receiver, probe, ms, silent) {
  const a = await receiver.evaluate(probe);
  await receiver.waitForTimeout(ms);
  const b = await receiver.evaluate(probe);
  const delay = ((b.delay - a.delay) / (b.emitted - a.emitted)) * 1000;
  if (!Number.isFinite(delay)) silent.push({ before: a, after: b });
  return delay;
}

const shardJitter = () => window.lab.jitter(window.tutti.state.sub);
const directJitter = () => window.lab.jitter();

/**
 * One profile's latency figures: a room through the shard and a direct call, each a pair
 * of pages; jitter-buffer delay in alternating windows, then click-to-ear.
 */
async function measure(profile) {
  const music = profile === 'music';
  const room = `latency-${profile}`;
  const link = music ? '&audio=music' : '';
  const player = await page(`${gateway.url}/?room=${room}&name=Player${link}`);
  const listener = await page(`${gateway.url}/?room=${room}&name=Listener${link}`);
  await waitForAudio(listener, 'Player');
  const directSender = await page(`${gateway.url}/healthz`);
  const directReceiver = await page(`${gateway.url}/healthz`);
  await directCall(directSender, directReceiver, music);
  await installLab(player);
  await installLab(listener);
  // Let both calls settle before measuring: a jitter buffer grows at once on a burst of
  // jitter (as setting up the other call causes on two cores) and shrinks over seconds.
  await listener.waitForTimeout(8000);
  const shard = [];
  const direct = [];
  const silent = [];
  for (let round = 0; round < 3; round += 1) {
    shard.push(await jitterWindow(listener, shardJitter, 5000, silent));
    direct.push(await jitterWindow(directReceiver, directJitter, 5000, silent));
  }
  // Click to ear: the listener's WebAudio hears the player's WebAudio clicks.
  const playerId = await participantId(listener, 'Player');
  await listener.evaluate((id) => window.lab.detectClicks(window.tutti.state.participants.get(id).stream), playerId);
  await player.evaluate(() => window.lab.startClicks(window.tutti.state.audioSender));
  await directReceiver.evaluate(() => window.lab.detectClicks());
  await directSender.evaluate(() => window.lab.startClicks());
  await listener.waitForTimeout(12_000);
  const shardClicks = await player.evaluate(() => window.lab.stopClicks());
  const shardHeard = await listener.evaluate(() => window.lab.stopDetecting());
  const directClicks = await directSender.evaluate(() => window.lab.stopClicks());
  const directHeard = await directReceiver.evaluate(() => window.lab.stopDetecting());
  if (process.env.TUTTI_TEST_VERBOSE) {
    const levels = [await listener.evaluate(() => window.lab.level), await directReceiver.evaluate(() => window.lab.level)];
    console.log(`clicks ${shardClicks.length}/${directClicks.length} heard ${shardHeard.length}/${directHeard.length} levels ${JSON.stringify(levels)}`);
  }
  const viaShard = pairClicks(shardClicks, shardHeard);
  const viaDirect = pairClicks(directClicks, directHeard);
  for (const p of [player, listener, directSender, directReceiver]) await p.context().close();
  return {
    profile,
    jitter_buffer_ms: { shard, direct, shard_mean: shard.reduce((a, b) => a + b) / shard.length, direct_mean: direct.reduce((a, b) => a + b) / direct.length },
    click_to_ear_ms: { shard_median: median(viaShard), direct_median: median(viaDirect), shard_n: viaShard.length, direct_n: viaDirect.length },
    silent_windows: silent,
  };
}

test('latency through the shard against a direct call (benchmark figures)', async () => {
  const results = [];
  for (const profile of ['music', 'speech']) {
    const r = await measure(profile);
    results.push(r);
    const j = r.jitter_buffer_ms;
    const c = r.click_to_ear_ms;
    console.log(`music: ${profile}: jitter buffer shard ${j.shard.map(fmt).join('/')} ms (mean ${fmt(j.shard_mean)}), `
      + `direct ${j.direct.map(fmt).join('/')} ms (mean ${fmt(j.direct_mean)}), shard - direct ${fmt(j.shard_mean - j.direct_mean)} ms; `
      + `click to ear shard ${fmt(c.shard_median)} ms (n=${c.shard_n}), direct ${fmt(c.direct_median)} ms (n=${c.direct_n})`);
    // What must hold for the figures to mean anything: audio flowed and clicks were heard
    // both ways. The figures themselves are reported, not asserted.
    assert.ok(j.shard.every(Number.isFinite) && j.direct.every(Number.isFinite), JSON.stringify(r));
    assert.ok(c.shard_n >= 5 && c.direct_n >= 5, `clicks heard: ${JSON.stringify(c)}`);
  }
  console.log(`music: latency ${JSON.stringify(results)}`);
});
