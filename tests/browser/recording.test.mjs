// A lesson recorded: two Chromium participants in a room the rooms file declares with
// `record = true`, the gateway in local mode with `--record-dir`. The recorder joins the
// room's shard as a relay pipe and writes each track as it comes; afterwards ffprobe
// (Debian's ffmpeg, not Tutti's code) must find both participants' audio and video, each
// as long as that participant sent it, and ffmpeg must decode every file without an error.
// Both pages show that the room is being recorded; a page in another room does not.
// A second gateway is killed (SIGKILL) while it records, also into S3-compatible object
// storage (moto's server): its files, and the chunks already in the bucket, still hold
// all but the last seconds. A third records over the HTTP API, with a join token that has
// the `record` grant, composes the lesson into one MP4 when the recording stops, and
// stores it all in the bucket, keeping only the manifest on its own disk.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startGateway, launch, openPage, openPageWithCodec, waitFor, waitForPlayingVideo, waitForAudio, binary,
  startObjectStore,
} from './lib.mjs';

const run = promisify(execFile);

/** Object storage flags of a gateway writing to `store`'s bucket `tutti`, and its keys. */
function storeArgs(store, ...extra) {
  return {
    args: ['--record-s3-endpoint', store.endpoint, '--record-s3-bucket', 'tutti', '--record-s3-prefix', 'recordings/', ...extra],
    env: { AWS_ACCESS_KEY_ID: 'tutti-test', AWS_SECRET_ACCESS_KEY: 'tutti-test-secret' },
  };
}

/** How long the lesson runs once both see and hear each other. */
const LESSON_MS = 10_000;

let gateway;
let browser;
let dir;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tutti-recording-'));
  const rooms = path.join(dir, 'rooms.toml');
  fs.writeFileSync(rooms, '[[rooms]]\nname = "lesson"\nrecord = true\n');
  gateway = await startGateway(['--shards', '2', '--rooms', rooms, '--record-dir', path.join(dir, 'recordings')]);
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  if (gateway) await gateway.stop();
  if (dir && !process.env.TUTTI_KEEP_RECORDINGS) fs.rmSync(dir, { recursive: true, force: true });
});

/**
 * Watches a page's own publisher connection: the wall-clock time of the first audio and
 * video packets it sent, taken every 100 ms from the moment the page opens.
 */
function watchSending(page) {
  const first = { audio: null, video: null };
  let stopped = false;
  const done = (async () => {
    while (!stopped) {
      const sent = await page.evaluate(async () => {
        const pc = window.tutti?.state?.pub;
        if (!pc) return {};
        const out = {};
        (await pc.getStats()).forEach((s) => {
          if (s.type === 'outbound-rtp') out[s.kind] = (out[s.kind] || 0) + (s.packetsSent || 0);
        });
        return out;
      }).catch(() => ({}));
      const now = Date.now();
      for (const kind of ['audio', 'video']) {
        if (first[kind] === null && sent[kind] > 0) first[kind] = now;
      }
      if (first.audio !== null && first.video !== null) return;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  return { first, done, stop: () => { stopped = true; } };
}

/**
 * Decodes a file from end to end with ffmpeg; its error output (empty when all is well).
 * Frames keep the file's own times: re-timed to a guessed frame rate, frames 49 ms apart
 * in a 20 fps stream fall on one tick and the null muxer complains about that, which is
 * ffmpeg's re-timing and not the file.
 */
async function decodeErrors(file) {
  const { stderr } = await run('ffmpeg', ['-v', 'error', '-i', file, '-fps_mode', 'passthrough', '-enc_time_base', '-1', '-f', 'null', '-']);
  return stderr.trim();
}

async function ffprobe(file) {
  const { stdout } = await run('ffprobe', [
    '-v', 'error', '-show_entries', 'stream=codec_name,codec_type,duration,width,height:format=duration',
    '-of', 'json', file,
  ]);
  return JSON.parse(stdout);
}

test('a two-person lesson is recorded: every track in its own file, as long as it was sent, decodable', async () => {
  const teacher = await openPage(browser, `${gateway.url}/?room=lesson&name=Teacher`);
  const teacherSent = watchSending(teacher);
  const student = await openPage(browser, `${gateway.url}/?room=lesson&name=Student`);
  const studentSent = watchSending(student);
  await waitForPlayingVideo(student, 'Teacher');
  await waitForPlayingVideo(teacher, 'Student');
  await waitForAudio(student, 'Teacher');
  await waitForAudio(teacher, 'Student');
  await Promise.all([teacherSent.done, studentSent.done]);
  // Both see that they are being recorded; someone in a room that is not recorded does not.
  for (const [page, name] of [[teacher, 'Teacher'], [student, 'Student']]) {
    await waitFor(`${name}'s page showing the recording`, () => page.evaluate(() => window.tutti.recordingShown()), (shown) => shown === true);
  }
  const elsewhere = await openPage(browser, `${gateway.url}/?room=practice&name=Other`);
  await waitFor('the unrecorded room joined', () => elsewhere.evaluate(() => window.tutti.state.joined), (joined) => joined === true);
  assert.equal(await elsewhere.evaluate(() => window.tutti.recordingShown()), false, 'no recording shown in a room nobody records');
  await elsewhere.context().close();
  await new Promise((resolve) => setTimeout(resolve, LESSON_MS));
  const hungUp = Date.now();
  await teacher.context().close();
  await student.context().close();

  // The recorder closes each file when its track ends; the manifest says so within a
  // second.
  const roomDir = path.join(dir, 'recordings', 'lesson');
  const recording = await waitFor(
    'both participants\' four tracks complete in the manifest',
    () => {
      const [stamp] = fs.existsSync(roomDir) ? fs.readdirSync(roomDir) : [];
      if (!stamp) return null;
      const file = path.join(roomDir, stamp, 'manifest.json');
      if (!fs.existsSync(file)) return null;
      return { dir: path.join(roomDir, stamp), manifest: JSON.parse(fs.readFileSync(file, 'utf8')) };
    },
    (r) => r && r.manifest.tracks.filter((t) => t.complete).length >= 4,
  );
  const { manifest } = recording;
  console.log(`manifest: ${JSON.stringify(manifest.tracks.map((t) => ({
    name: t.name, kind: t.kind, codec: t.codec, file: t.file, durationMs: t.durationMs,
    packets: t.packets, lost: t.lost, written: t.written, bytes: t.bytes,
  })))}`);
  assert.equal(manifest.room, 'lesson');

  // Files are the owner's alone.
  const mode = fs.statSync(recording.dir).mode & 0o777;
  assert.equal(mode, 0o700, `the recording's directory is private (mode ${mode.toString(8)})`);

  const sent = { Teacher: teacherSent.first, Student: studentSent.first };
  for (const name of ['Teacher', 'Student']) {
    for (const kind of ['audio', 'video']) {
      const tracks = manifest.tracks.filter((t) => t.name === name && t.kind === kind);
      assert.equal(tracks.length, 1, `one ${kind} file of ${name}: ${JSON.stringify(tracks)}`);
      const [track] = tracks;
      const file = path.join(recording.dir, track.file);
      assert.equal(fs.statSync(file).mode & 0o777, 0o600, `${track.file} is private`);
      const probed = await ffprobe(file);
      const stream = probed.streams.find((s) => s.codec_type === kind);
      assert.ok(stream, `ffprobe finds ${kind} in ${track.file}: ${JSON.stringify(probed)}`);
      assert.equal(stream.codec_name, kind === 'audio' ? 'opus' : 'vp8');
      const seconds = Number(stream.duration ?? probed.format?.duration);
      // What the participant sent: from its first packet of the kind to hanging up.
      const call = (hungUp - sent[name][kind]) / 1000;
      const ratio = seconds / call;
      console.log(`${name} ${kind}: ${track.file} ${seconds.toFixed(2)} s recorded of ${call.toFixed(2)} s sent (${(ratio * 100).toFixed(1)} %), ${track.written} ${kind === 'audio' ? 'packets' : 'frames'}, ${track.lost} lost${kind === 'video' ? `, ${stream.width}x${stream.height}` : ''}`);
      assert.ok(Math.abs(ratio - 1) <= 0.05, `${name}'s ${kind} lasts ${seconds} s against ${call} s sent`);
      // Decoded from end to end by ffmpeg, which must report nothing.
      assert.equal(await decodeErrors(file), '', `ffmpeg decodes ${track.file} without errors`);
    }
  }
});

test('a recording killed with its gateway keeps all but its last seconds, on disk and in object storage', async () => {
  const crashDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tutti-recording-crash-'));
  const store = await startObjectStore('tutti');
  try {
    const rooms = path.join(crashDir, 'rooms.toml');
    fs.writeFileSync(rooms, '[[rooms]]\nname = "lesson"\nrecord = true\n');
    const stored = storeArgs(store, '--record-upload-every', '2', '--record-keep-local');
    const doomed = await startGateway(
      ['--shards', '1', '--rooms', rooms, '--record-dir', path.join(crashDir, 'recordings'), ...stored.args],
      stored.env,
    );
    let killedAt;
    let sent;
    try {
      const page = await openPage(browser, `${doomed.url}/?room=lesson&name=Soloist`);
      sent = watchSending(page);
      await sent.done;
      await waitFor('the page showing the recording', () => page.evaluate(() => window.tutti.recordingShown()), (shown) => shown === true);
      await new Promise((resolve) => setTimeout(resolve, 6_000));
      killedAt = Date.now();
      await doomed.kill();
      await page.context().close();
    } finally {
      await doomed.kill();
    }
    const roomDir = path.join(crashDir, 'recordings', 'lesson');
    const [stamp] = fs.readdirSync(roomDir);
    const recording = path.join(roomDir, stamp);
    const manifest = JSON.parse(fs.readFileSync(path.join(recording, 'manifest.json'), 'utf8'));
    assert.equal(manifest.endedAtMs, null, 'the manifest shows the recording never ended cleanly');
    for (const kind of ['audio', 'video']) {
      const [track] = manifest.tracks.filter((t) => t.kind === kind);
      assert.ok(track, `the manifest names the ${kind} file`);
      const file = path.join(recording, track.file);
      const probed = await ffprobe(file);
      const stream = probed.streams.find((s) => s.codec_type === kind);
      const seconds = Number(stream?.duration ?? probed.format?.duration);
      const before = (killedAt - sent.first[kind]) / 1000;
      const errors = await decodeErrors(file);
      console.log(`killed: ${kind} ${seconds.toFixed(2)} s kept of ${before.toFixed(2)} s sent before the kill; ffmpeg: ${errors || 'no errors'}`);
      assert.ok(seconds >= before - 2 && seconds <= before + 0.5, `${kind}: ${seconds} s kept of ${before} s`);

      // The bucket's chunks of that file, joined in key order, are a file of their own:
      // at most one upload interval (2 s) shorter than the one on disk.
      const prefix = `recordings/lesson/${stamp}/chunks/${track.file}/`;
      const chunks = (await store.list(prefix)).map((c) => c.key).sort();
      assert.ok(chunks.length >= 2, `chunks of ${track.file} in the bucket: ${chunks}`);
      const joined = path.join(crashDir, `joined-${track.file}`);
      fs.writeFileSync(joined, Buffer.concat(await Promise.all(chunks.map((key) => store.get(key)))));
      const probedJoined = await ffprobe(joined);
      const joinedStream = probedJoined.streams.find((s) => s.codec_type === kind);
      const joinedSeconds = Number(joinedStream?.duration ?? probedJoined.format?.duration);
      const joinedErrors = await decodeErrors(joined);
      console.log(`killed, object storage: ${kind} ${joinedSeconds.toFixed(2)} s in ${chunks.length} chunks of ${before.toFixed(2)} s sent; ffmpeg: ${joinedErrors || 'no errors'}`);
      assert.ok(joinedSeconds >= before - 4.5 && joinedSeconds <= seconds + 0.1, `${kind}: ${joinedSeconds} s stored of ${before} s`);
      assert.equal(joinedErrors, '', `ffmpeg decodes the joined chunks of ${track.file}`);
    }
  } finally {
    store.stop();
    if (!process.env.TUTTI_KEEP_RECORDINGS) fs.rmSync(crashDir, { recursive: true, force: true });
  }
});

test('a recording started and stopped over the API is composed into one file of the whole lesson, stored in object storage', async () => {
  const composeDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tutti-recording-compose-'));
  const store = await startObjectStore('tutti');
  const stored = storeArgs(store);
  const secret = 'recording-test-jwt-secret-0123456789abcdef';
  const rooms = path.join(composeDir, 'rooms.toml');
  fs.writeFileSync(rooms, '[[rooms]]\nname = "recital"\n');
  const composer = await startGateway([
    '--shards', '1', '--rooms', rooms, '--record-dir', path.join(composeDir, 'recordings'),
    '--record-compose', '--jwt-secret', secret, ...stored.args,
  ], stored.env);
  try {
    const api = `${composer.url}/v1/rooms/recital/recording`;
    const { stdout } = await run(binary('tutti-gateway'), [
      'token', '--room', 'recital', '--name', 'Organiser', '--record', '--jwt-secret', secret,
    ]);
    const auth = { authorization: `Bearer ${stdout.trim()}` };
    const started = await fetch(api, { method: 'POST', headers: auth });
    assert.equal(started.status, 201, await started.text());

    const pianist = await openPage(browser, `${composer.url}/?room=recital&name=Pianist`);
    const singer = await openPage(browser, `${composer.url}/?room=recital&name=Singer`);
    await waitForPlayingVideo(singer, 'Pianist');
    await waitForPlayingVideo(pianist, 'Singer');
    await waitForAudio(pianist, 'Singer');
    await new Promise((resolve) => setTimeout(resolve, 8_000));
    await pianist.context().close();
    await singer.context().close();

    const stopped = await fetch(api, { method: 'DELETE', headers: auth });
    assert.equal(stopped.status, 200);
    const status = await waitFor(
      'the composed file',
      async () => (await fetch(api, { headers: auth })).json(),
      (s) => s.phase === 'Stopped',
      120_000,
    );
    assert.equal(status.composeError, null, `composed without an error: ${status.composeError}`);
    assert.equal(status.composed, 'composed.mp4');
    assert.equal(status.files.length, 4, JSON.stringify(status.files));
    assert.equal(status.stored?.complete, true, `stored whole: ${JSON.stringify(status.stored)}`);
    assert.equal(status.stored.location, `s3://tutti/recordings/${status.path}/`);
    const recording = path.join(composeDir, 'recordings', status.path);
    const manifestFile = path.join(recording, 'manifest.json');
    assert.equal(fs.statSync(manifestFile).mode & 0o777, 0o600, 'the manifest is private');
    const manifest = JSON.parse(fs.readFileSync(manifestFile, 'utf8'));
    const starts = manifest.tracks.map((t) => t.startsAtMs);
    const ends = manifest.tracks.map((t) => t.startsAtMs + t.durationMs);
    const span = (Math.max(...ends) - Math.min(...starts)) / 1000;
    // Stored whole, the local copies are gone; every file is in the bucket, no chunk is.
    const keys = (await store.list(`recordings/${status.path}/`)).map((o) => o.key);
    assert.ok(!keys.some((k) => k.includes('/chunks/')), `no chunks left: ${keys}`);
    for (const name of [...status.files.map((f) => f.file), status.composed, 'manifest.json']) {
      assert.ok(keys.includes(`recordings/${status.path}/${name}`), `${name} in the bucket: ${keys}`);
    }
    assert.ok(!fs.existsSync(path.join(recording, status.composed)), 'the local composed file is deleted once stored');
    const file = path.join(composeDir, status.composed);
    fs.writeFileSync(file, await store.get(`recordings/${status.path}/${status.composed}`));
    const probed = await ffprobe(file);
    const video = probed.streams.find((s) => s.codec_type === 'video');
    const audio = probed.streams.find((s) => s.codec_type === 'audio');
    assert.equal(video?.codec_name, 'h264');
    assert.equal(audio?.codec_name, 'aac');
    assert.equal(video.width, 1280, 'two tiles side by side');
    assert.equal(video.height, 360);
    const seconds = Number(probed.format.duration);
    console.log(`composed: ${seconds.toFixed(2)} s of a ${span.toFixed(2)} s session, ${video.width}x${video.height}, ${(fs.statSync(file).size / 1024).toFixed(0)} KiB`);
    assert.ok(Math.abs(seconds / span - 1) <= 0.05, `the composed file lasts ${seconds} s against ${span} s recorded`);
    assert.equal(await decodeErrors(file), '', 'ffmpeg decodes the composed file without errors');
  } finally {
    await composer.stop();
    store.stop();
    if (!process.env.TUTTI_KEEP_RECORDINGS) fs.rmSync(composeDir, { recursive: true, force: true });
  }
});

test('VP9 and AV1 cameras are recorded as they were sent', async () => {
  const codecDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tutti-recording-codecs-'));
  const rooms = path.join(codecDir, 'rooms.toml');
  fs.writeFileSync(rooms, '[[rooms]]\nname = "codecs"\nrecord = true\n');
  const recorder = await startGateway(['--shards', '1', '--rooms', rooms, '--record-dir', path.join(codecDir, 'recordings')]);
  try {
    const vp9 = await openPageWithCodec(browser, `${recorder.url}/?room=codecs&name=Nine`, 'VP9');
    const av1 = await openPageWithCodec(browser, `${recorder.url}/?room=codecs&name=One`, 'AV1');
    const sent = { Nine: watchSending(vp9), One: watchSending(av1) };
    await waitForPlayingVideo(av1, 'Nine');
    await waitForPlayingVideo(vp9, 'One');
    await Promise.all([sent.Nine.done, sent.One.done]);
    await new Promise((resolve) => setTimeout(resolve, LESSON_MS));
    const hungUp = Date.now();
    await vp9.context().close();
    await av1.context().close();
    const roomDir = path.join(codecDir, 'recordings', 'codecs');
    const recording = await waitFor(
      'both cameras complete in the manifest',
      () => {
        const [stamp] = fs.existsSync(roomDir) ? fs.readdirSync(roomDir) : [];
        const file = stamp && path.join(roomDir, stamp, 'manifest.json');
        if (!file || !fs.existsSync(file)) return null;
        return { dir: path.join(roomDir, stamp), manifest: JSON.parse(fs.readFileSync(file, 'utf8')) };
      },
      (r) => r && r.manifest.tracks.filter((t) => t.kind === 'video' && t.complete).length >= 2,
    );
    for (const [name, codec] of [['Nine', 'vp9'], ['One', 'av1']]) {
      const [track] = recording.manifest.tracks.filter((t) => t.name === name && t.kind === 'video');
      assert.ok(track, `${name}'s camera was recorded: ${JSON.stringify(recording.manifest.tracks)}`);
      const file = path.join(recording.dir, track.file);
      const probed = await ffprobe(file);
      const stream = probed.streams.find((s) => s.codec_type === 'video');
      assert.equal(stream?.codec_name, codec, JSON.stringify(probed));
      const seconds = Number(stream.duration ?? probed.format?.duration);
      const call = (hungUp - sent[name].first.video) / 1000;
      const errors = await decodeErrors(file);
      // Every decoded frame's size: the first picture may hold only the base layer (the
      // shard forwards the upper one from its next switching point), the rest the top.
      const { stdout: frames } = await run('ffprobe', ['-v', 'error', '-select_streams', 'v', '-show_entries', 'frame=width,height', '-of', 'csv=p=0', file]);
      const sizes = frames.trim().split('\n');
      const top = sizes.filter((size) => size === sizes[sizes.length - 1]).length;
      console.log(`${codec}: ${track.file} ${seconds.toFixed(2)} s recorded of ${call.toFixed(2)} s sent (${(seconds / call * 100).toFixed(1)} %), ${track.written} frames written, ${sizes.length} decoded, ${top} at ${sizes[sizes.length - 1]}, ${track.lost} lost; ffmpeg: ${errors || 'no errors'}`);
      assert.ok(Math.abs(seconds / call - 1) <= 0.05, `${codec}: ${seconds} s against ${call} s sent`);
      assert.equal(errors, '', `ffmpeg decodes the ${codec} file without errors`);
      assert.equal(sizes.length, track.written, 'every frame written is decoded');
    }
  } finally {
    await recorder.stop();
    if (!process.env.TUTTI_KEEP_RECORDINGS) fs.rmSync(codecDir, { recursive: true, force: true });
  }
});
