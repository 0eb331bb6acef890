// Media sessions that do not drop: a participant whose browser stops dead for 20 s (its
// renderer process stopped with SIGSTOP, as a loaded or suspended machine does) is still in
// the room afterwards and media comes back both ways; an ICE restart of both connections
// keeps the session, the seat and the tracks. The other side sees a freeze, not a
// departure. And a page told to rejoin (its room moved) is not talked out of it by what
// the old socket still had queued.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  startGateway, launch, openPage, waitFor, waitForPlayingVideo, waitForAudio, remoteVideo,
} from './lib.mjs';

let gateway;
let teacherBrowser;
let studentBrowser;

before(async () => {
  gateway = await startGateway(['--shards', '1']);
  teacherBrowser = await launch();
  studentBrowser = await launch();
});

after(async () => {
  for (const b of [teacherBrowser, studentBrowser]) if (b) await b.close();
  if (gateway) await gateway.stop();
});

/** Process ids of Chromium renderers now running. */
function renderers() {
  const out = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
  return new Set(out.split('\n')
    .filter((line) => line.includes('--type=renderer'))
    .map((line) => Number(line.trim().split(/\s+/)[0])));
}

/** Notices ("X joined", "X left") the page shows. */
function notices(page) {
  return page.evaluate(() => [...document.querySelectorAll('#messages li.system')].map((li) => li.textContent));
}

/** Both sides play each other's video and hear each other. */
async function mediaBothWays(teacher, student) {
  await waitForPlayingVideo(student, 'Teacher', 40_000);
  await waitForPlayingVideo(teacher, 'Student', 40_000);
  await waitForAudio(student, 'Teacher', 40_000);
  await waitForAudio(teacher, 'Student', 40_000);
}

test('a participant frozen for 20 s is still in the room and media comes back both ways', async () => {
  const teacher = await openPage(teacherBrowser, `${gateway.url}/?room=frozen&name=Teacher`);
  await waitFor('the teacher in the room', () => teacher.evaluate(() => window.tutti.state.joined), Boolean);
  const before = renderers();
  const student = await openPage(studentBrowser, `${gateway.url}/?room=frozen&name=Student`);
  await mediaBothWays(teacher, student);
  const studentRenderers = [...renderers()].filter((pid) => !before.has(pid));
  assert.ok(studentRenderers.length > 0, 'the student page has a renderer of its own');

  // The student's page stops dead: no JavaScript, no ICE checks, no media, for 20 s: past
  // the 5 s after which the shard used to stop sending and the 15 s after which it ended
  // the session.
  for (const pid of studentRenderers) process.kill(pid, 'SIGSTOP');
  const frozenAt = Date.now();
  try {
    await new Promise((resolve) => setTimeout(resolve, 20_000));
  } finally {
    for (const pid of studentRenderers) process.kill(pid, 'SIGCONT');
  }
  console.log(`recovery: student frozen for ${((Date.now() - frozenAt) / 1000).toFixed(1)} s`);
  const resumedAt = Date.now();
  await mediaBothWays(teacher, student);
  console.log(`recovery: media back both ways ${((Date.now() - resumedAt) / 1000).toFixed(1)} s after the freeze`);
  assert.equal(await student.evaluate(() => window.tutti.state.joined), true, 'the student never left');
  const seen = await notices(teacher);
  assert.ok(!seen.some((n) => n.includes('Student left')), `the teacher saw no departure: ${seen}`);
  assert.ok((await remoteVideo(teacher, 'Student')) !== null, 'the student tile stayed');
  const room = await (await fetch(`${gateway.url}/v1/rooms/frozen`)).json();
  assert.equal(room.participants, 2, JSON.stringify(room));
  await student.context().close();
  await teacher.context().close();
});

test('an ICE restart of both connections keeps the session and its media', async () => {
  const teacher = await openPage(teacherBrowser, `${gateway.url}/?room=restart&name=Teacher`);
  const student = await openPage(studentBrowser, `${gateway.url}/?room=restart&name=Student`);
  await mediaBothWays(teacher, student);
  const ufrags = (page) => page.evaluate(() => {
    const ufrag = (sdp) => (sdp || '').match(/a=ice-ufrag:(\S+)/)?.[1];
    const { pub, sub } = window.tutti.state;
    return {
      publisherLocal: ufrag(pub.localDescription.sdp),
      publisherShard: ufrag(pub.remoteDescription.sdp),
      subscriberShard: ufrag(sub.remoteDescription.sdp),
    };
  });
  const old = await ufrags(student);
  const participant = await student.evaluate(() => window.tutti.state.me);
  await student.evaluate(() => window.tutti.restartMedia());
  const renewed = await waitFor(
    'fresh ICE credentials on both connections, both sides',
    () => ufrags(student),
    (u) => Object.keys(u).every((k) => u[k] && u[k] !== old[k]),
  );
  console.log(`recovery: ICE restarted ${JSON.stringify(old)} -> ${JSON.stringify(renewed)}`);
  await mediaBothWays(teacher, student);
  assert.equal(await student.evaluate(() => window.tutti.state.me), participant, 'the same participant');
  assert.equal(await student.evaluate(() => window.tutti.state.mediaRestarts), 2);
  const seen = await notices(teacher);
  assert.ok(!seen.some((n) => n.includes('Student left')), `the teacher saw no departure: ${seen}`);
  await student.context().close();
  await teacher.context().close();
});

test('a page told to rejoin ignores what its replaced socket still had to say', async () => {
  // The gateway's socket is scripted here, to replay in a fixed order what a room's move
  // produced at random in the placement test: `reconnect`, then `not_joined` for an answer
  // the page had sent a moment too late. The page once took that error for a refused
  // join and ended the call.
  const context = await teacherBrowser.newContext();
  const page = await context.newPage();
  // An offer keeps the page's signaling queue busy (applying it takes a few tasks), so
  // that the two messages after it are both queued before the first is handled, as they
  // were in the placement test.
  const offer = await page.evaluate(async () => {
    const pc = new RTCPeerConnection();
    pc.addTransceiver('audio', { direction: 'sendonly' });
    pc.addTransceiver('video', { direction: 'sendonly' });
    const { sdp } = await pc.createOffer();
    pc.close();
    return sdp;
  });
  const joins = [];
  await page.routeWebSocket(/\/v1\/ws$/, (ws) => {
    ws.onMessage((text) => {
      const message = JSON.parse(text);
      if (message.type !== 'join') return;
      joins.push(message);
      const joined = {
        v: 1,
        type: 'joined',
        room: message.room,
        participant: 'p-moved',
        name: message.name,
        publish: false,
        subscribe: true,
        participants: [],
        ice_servers: [],
        resume: 'resume-token',
        simulcast: false,
        audio: { profile: 'speech' },
      };
      ws.send(JSON.stringify(joined));
      if (joins.length === 1) {
        ws.send(JSON.stringify({ v: 1, type: 'offer', sdp: offer }));
        ws.send(JSON.stringify({ v: 1, type: 'reconnect', reason: 'the room moved to another shard; join again' }));
        ws.send(JSON.stringify({ v: 1, type: 'error', code: 'not_joined', message: 'send join first' }));
      }
    });
  });
  await page.goto(`${gateway.url}/?room=moving&name=Mover`);
  await waitFor('a second join after the reconnect', () => joins.length, (n) => n >= 2, 20_000);
  assert.equal(joins[1].resume, 'resume-token', 'the page came back as the same participant');
  const shown = await waitFor('the page in the room again', () => page.evaluate(() => ({
    joined: window.tutti.state.joined,
    banner: document.querySelector('#banner').classList.contains('hidden') ? null : document.querySelector('#banner').dataset.code,
  })), (s) => s.joined === true);
  assert.equal(shown.banner, null, 'no error from the replaced socket is shown');
  await context.close();
});
