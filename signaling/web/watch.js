// Tutti viewer page: /watch?broadcast=NAME. Receive only: the gateway seats the viewer on
// one of the broadcast's edge shards, which sends the stage's media on one peer
// connection. When the edge goes away the gateway says `reconnect` (or the socket drops),
// and the page joins again, landing on another edge.

import { preferStereo } from './sdp.js';

const MESSAGES = {
  room_not_found: 'There is no broadcast with that name.',
  unavailable: 'The broadcast is not on the air yet, or is growing. Retrying…',
  shard_unavailable: 'No media server can take you right now. Retrying…',
  connection_lost: 'The connection was lost. Reconnecting…',
};
// Errors that mean "not yet": the page keeps trying.
const TRANSIENT = new Set(['unavailable', 'shard_unavailable', 'internal', 'rate_limited']);

const $ = (selector) => document.querySelector(selector);

const state = {
  broadcast: '',
  ws: null,
  // Counts sockets and retries: what a socket that a retry replaced still had queued is
  // dropped (see connect()).
  connection: 0,
  sub: null,
  joined: false,
  participant: null,
  iceServers: [],
  presenters: new Map(), // participant id -> { name, tile, stream }
  trackOwner: new Map(), // track id -> participant id
  videoTracks: new Set(), // announced video track ids (for quality changes)
  quality: 'high',
  retryDelay: 500,
  retryTimer: null,
  joins: 0,
};

function setStatus(text) {
  $('#status').textContent = text;
}

function showBanner(text) {
  $('#banner-text').textContent = text;
  $('#banner').classList.toggle('hidden', !text);
}

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ v: 1, ...message }));
  }
}

function presenter(id, name) {
  let entry = state.presenters.get(id);
  if (entry) return entry;
  const tile = $('#tile-template').content.firstElementChild.cloneNode(true);
  tile.dataset.participant = id;
  tile.dataset.name = name || 'presenter';
  tile.querySelector('.name').textContent = name || 'presenter';
  $('#grid').append(tile);
  entry = { name, tile, stream: new MediaStream() };
  tile.querySelector('video').srcObject = entry.stream;
  state.presenters.set(id, entry);
  return entry;
}

function dropPresenter(id) {
  const entry = state.presenters.get(id);
  if (!entry) return;
  entry.tile.remove();
  state.presenters.delete(id);
}

function subscriber() {
  if (state.sub) return state.sub;
  const pc = new RTCPeerConnection({ iceServers: state.iceServers, bundlePolicy: 'max-bundle' });
  state.sub = pc;
  pc.addEventListener('icecandidate', ({ candidate }) => {
    if (candidate && candidate.candidate) {
      send({
        type: 'candidate', pc: 'subscriber', candidate: candidate.candidate,
        sdpMid: candidate.sdpMid, sdpMLineIndex: candidate.sdpMLineIndex,
      });
    }
  });
  pc.addEventListener('track', ({ track, streams, receiver }) => {
    // A music stage sends each presenter's sound in a stream of its own: find the owner
    // by track first.
    const owner = state.trackOwner.get(track.id) || streams[0]?.id;
    if (track.kind === 'audio' && state.music && 'jitterBufferTarget' in receiver) {
      receiver.jitterBufferTarget = 0;
    }
    if (!owner) return;
    const entry = presenter(owner, state.presenters.get(owner)?.name);
    for (const old of entry.stream.getTracks().filter((t) => t.kind === track.kind)) {
      entry.stream.removeTrack(old);
    }
    entry.stream.addTrack(track);
    const video = entry.tile.querySelector('video');
    video.play().catch(() => {
      document.addEventListener('click', () => video.play().catch(() => {}), { once: true });
    });
  });
  return pc;
}

function closeConnection() {
  if (state.sub) state.sub.close();
  state.sub = null;
  for (const id of [...state.presenters.keys()]) dropPresenter(id);
  state.trackOwner.clear();
  state.videoTracks.clear();
}

function applyQuality() {
  for (const track of state.videoTracks) send({ type: 'set_quality', track, quality: state.quality });
}

function retry(reason) {
  state.connection += 1;
  state.joined = false;
  closeConnection();
  if (state.ws) {
    const old = state.ws;
    state.ws = null;
    old.close();
  }
  setStatus('Reconnecting…');
  if (reason) showBanner(MESSAGES[reason] || `Reconnecting: ${reason}`);
  clearTimeout(state.retryTimer);
  const delay = state.retryDelay;
  state.retryDelay = Math.min(state.retryDelay * 2, 5000);
  state.retryTimer = setTimeout(connect, delay);
}

async function onMessage(message) {
  switch (message.type) {
    case 'joined':
      state.joined = true;
      state.joins += 1;
      state.retryDelay = 500;
      state.participant = message.participant;
      state.iceServers = message.ice_servers || [];
      state.music = message.audio?.profile === 'music';
      showBanner('');
      setStatus('Watching');
      for (const p of message.participants) {
        presenter(p.id, p.name).tile.classList.toggle('screen', Boolean(p.screen_sharing));
        for (const track of p.tracks || []) {
          state.trackOwner.set(track.id, p.id);
          if (track.kind === 'video') state.videoTracks.add(track.id);
        }
      }
      break;
    case 'participant_joined':
      presenter(message.participant.id, message.participant.name);
      break;
    case 'participant_left':
      dropPresenter(message.participant);
      break;
    case 'screen_share':
      // A shared screen is shown whole (letterboxed), not cropped to the tile like a face.
      state.presenters.get(message.participant)?.tile.classList.toggle('screen', message.active);
      break;
    case 'track_published':
      state.trackOwner.set(message.track.id, message.participant);
      if (message.track.kind === 'video') {
        state.videoTracks.add(message.track.id);
        if (state.quality !== 'high') send({ type: 'set_quality', track: message.track.id, quality: state.quality });
      }
      break;
    case 'track_unpublished':
      state.trackOwner.delete(message.track);
      state.videoTracks.delete(message.track);
      break;
    case 'offer': {
      const pc = subscriber();
      await pc.setRemoteDescription({ type: 'offer', sdp: message.sdp });
      const answer = await pc.createAnswer();
      // A music stage is stereo: say so, or the browser decodes it in mono.
      if (state.music) answer.sdp = preferStereo(answer.sdp);
      await pc.setLocalDescription(answer);
      send({ type: 'answer', pc: 'subscriber', sdp: pc.localDescription.sdp });
      break;
    }
    case 'reconnect':
      retry(null);
      break;
    case 'left':
      retry(null);
      break;
    case 'error':
      if (TRANSIENT.has(message.code) && !state.joined) {
        retry(message.code);
      } else if (!state.joined) {
        setStatus('');
        showBanner(MESSAGES[message.code] || message.message);
      }
      break;
    default:
      break;
  }
}

let queue = Promise.resolve();

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${scheme}://${location.host}/v1/ws`);
  state.ws = ws;
  state.connection += 1;
  const connection = state.connection;
  const current = () => state.connection === connection;
  setStatus('Connecting…');
  ws.addEventListener('open', () => send({ type: 'join', room: state.broadcast, watch: true }));
  ws.addEventListener('message', (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!current()) return;
    queue = queue
      .then(() => (current() ? onMessage(message) : undefined))
      .catch((err) => console.error('watch step failed', err));
  });
  ws.addEventListener('close', () => {
    if (state.ws !== ws) return;
    state.ws = null;
    retry('connection_lost');
  });
}

// What a viewer observes, for end-to-end tests and for people debugging a stream.
async function inboundStats() {
  if (!state.sub) return [];
  const report = await state.sub.getStats();
  const codecs = new Map();
  report.forEach((stat) => { if (stat.type === 'codec') codecs.set(stat.id, stat.mimeType); });
  const rows = [];
  report.forEach((stat) => {
    if (stat.type !== 'inbound-rtp') return;
    rows.push({
      kind: stat.kind,
      participant: state.trackOwner.get(stat.trackIdentifier) || null,
      codec: codecs.get(stat.codecId) || null,
      packetsReceived: stat.packetsReceived || 0,
      framesDecoded: stat.framesDecoded || 0,
      frameWidth: stat.frameWidth || 0,
      frameHeight: stat.frameHeight || 0,
    });
  });
  return rows;
}

window.tutti = { state, inboundStats };

function init() {
  const params = new URLSearchParams(location.search);
  state.broadcast = (params.get('broadcast') || '').trim();
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(state.broadcast)) {
    showBanner('Open this page as /watch?broadcast=NAME.');
    return;
  }
  const quality = params.get('quality');
  if (['low', 'medium', 'high'].includes(quality)) state.quality = quality;
  $('#quality').value = state.quality;
  $('#quality').addEventListener('change', () => {
    state.quality = $('#quality').value;
    applyQuality();
  });
  document.title = `${state.broadcast} — Tutti`;
  $('#room-title').textContent = state.broadcast;
  connect();
}

init();
