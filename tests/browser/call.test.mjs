// A violin lesson in real browsers: two participants by deep link, a third without a
// camera, screen sharing started and stopped three times, chat and a direct message, and
// a refused nickname; all through the gateway's local mode (two embedded shards).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, launch, openPage, waitFor, waitForPlayingVideo, waitForAudio, remoteVideo,
  chatLines, bannerCode, participantId,
} from './lib.mjs';

let gateway;
let browser;
let deniedBrowser;
let teacher;
let student;
let listener;

before(async () => {
  gateway = await startGateway(['--shards', '2']);
  browser = await launch();
  // No fake-UI flag: a prompt nobody answers is a denial, and only the microphone is granted.
  deniedBrowser = await launch({ fakeUi: false });
});

after(async () => {
  for (const b of [browser, deniedBrowser]) if (b) await b.close();
  if (gateway) await gateway.stop();
});

test('two participants joining by deep link see and hear each other', async () => {
  teacher = await openPage(browser, `${gateway.url}/?room=lesson&name=Teacher`);
  student = await openPage(browser, `${gateway.url}/?room=lesson&name=Student`);
  const atStudent = await waitForPlayingVideo(student, 'Teacher');
  const atTeacher = await waitForPlayingVideo(teacher, 'Student');
  assert.ok(atStudent.width > 0 && atTeacher.width > 0);
  await waitForAudio(student, 'Teacher');
  await waitForAudio(teacher, 'Student');
});

test('a participant whose camera is denied joins with audio and is heard', async () => {
  listener = await openPage(deniedBrowser, `${gateway.url}/?room=lesson&name=Listener`, ['microphone']);
  const note = await waitFor(
    'the audio-only note',
    () => listener.evaluate(() => document.querySelector('#media-note').textContent),
    (text) => text.includes('audio only'),
  );
  assert.match(note, /NotAllowedError/);
  await waitForAudio(teacher, 'Listener');
  await waitForAudio(student, 'Listener');
  const tile = await remoteVideo(teacher, 'Listener');
  assert.match(tile.classes, /no-video/, 'an audio-only participant shows an avatar, not video');
  // The listener receives both others even without a camera of its own.
  await waitForPlayingVideo(listener, 'Teacher');
  await waitForAudio(listener, 'Student');
});

test('screen share started and stopped three times leaves the video flowing', async () => {
  // What the student sees, whatever resolution a loaded machine makes Chromium send: the
  // tile marked as a screen and showing the screen's shape (16:9, the camera is 4:3), then
  // the camera's shape again, with frames advancing each time.
  const aspect = (v) => (v && v.height > 0 ? v.width / v.height : 0);
  const camera = aspect(await waitForPlayingVideo(student, 'Teacher'));
  for (let round = 1; round <= 3; round += 1) {
    await teacher.click('#toggle-screen');
    await waitFor(
      `the student to see the teacher sharing (round ${round})`,
      () => remoteVideo(student, 'Teacher'),
      (v) => v && v.classes.includes('screen') && Math.abs(aspect(v) - camera) > 0.1,
    );
    await waitForPlayingVideo(student, 'Teacher');
    await teacher.click('#toggle-screen');
    await waitFor(
      `the student to see the teacher's camera again (round ${round})`,
      () => remoteVideo(student, 'Teacher'),
      (v) => v && !v.classes.includes('screen') && Math.abs(aspect(v) - camera) < 0.05,
    );
    await waitForPlayingVideo(student, 'Teacher');
  }
  await waitForPlayingVideo(listener, 'Teacher');
});

test('chat reaches everyone and a direct message only its recipient', async () => {
  const studentId = await participantId(teacher, 'Student');
  await teacher.fill('#chat-text', 'tune to A, please');
  await teacher.click('#chat-form button[type=submit]');
  await teacher.selectOption('#chat-to', studentId);
  await teacher.fill('#chat-text', 'your bow hold is better today');
  await teacher.click('#chat-form button[type=submit]');
  const everyone = 'tune to A, please';
  const secret = 'your bow hold is better today';
  for (const [page, seesSecret] of [[teacher, true], [student, true], [listener, false]]) {
    const lines = await waitFor(
      'the chat to arrive',
      () => chatLines(page),
      (l) => l.some((m) => m.text === everyone) && (!seesSecret || l.some((m) => m.text === secret)),
    );
    const texts = lines.map((m) => m.text);
    assert.equal(texts.filter((t) => t === everyone).length, 1);
    assert.equal(texts.includes(secret), seesSecret);
    if (seesSecret) {
      assert.deepEqual(lines.find((m) => m.text === secret).to, studentId);
    }
  }
  // Delivery is checked where it matters: give the listener's page every chance to have
  // received the direct message (a later broadcast arrives after it on the same socket).
  await teacher.selectOption('#chat-to', '');
  await teacher.fill('#chat-text', 'last one');
  await teacher.click('#chat-form button[type=submit]');
  await waitFor('the last message', () => chatLines(listener), (l) => l.some((m) => m.text === 'last one'));
  assert.ok(!(await chatLines(listener)).some((m) => m.text === secret));
});

test('a nickname already in the room, in another case, is refused with a clear message', async () => {
  const impostor = await openPage(browser, `${gateway.url}/?room=lesson&name=TEACHER`);
  const code = await waitFor('the refusal', () => bannerCode(impostor), (c) => c !== null);
  assert.equal(code, 'nickname_taken');
  const text = await impostor.evaluate(() => document.querySelector('#banner-text').textContent);
  assert.match(text, /already uses that name/);
  assert.ok(await impostor.isVisible('#join-form'));
  // The lesson goes on.
  await waitForPlayingVideo(student, 'Teacher');
});
