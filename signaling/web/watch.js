// Tutti viewer page: /watch?broadcast=NAME. Receive only: the gateway seats the viewer on
// one of the broadcast's edge shards, which sends the stage's media on one peer
// connection. When the edge goes away the gateway says `reconnect` (or the socket drops),
// and the page joins again, landing on another edge.
//
// A broadcast packaged as HLS is played over HLS instead (a few seconds behind) when
// WebRTC cannot connect from the viewer's network, when its WebRTC audience is full
// (`use_hls`), or by choice (`&hls=1`, or the button); the badge says which.

import { preferStereo } from './sdp.js';

const MESSAGES = {
  room_not_found: 'There is no broadcast with that name.',
  use_hls: 'The real-time audience is full: you are watching over HLS, a few seconds behind.',
  no_webrtc: 'Real-time video cannot reach your network: you are watching over HLS, a few seconds behind.',
  unavailable: 'The broadcast is not on the air yet, or is growing. Retrying…',
  shard_unavailable: 'No media server can take you right now. Retrying…',
  connection_lost: 'The connection was lost. Reconnecting…',
};
// Errors that mean "not yet": the page keeps trying.
const TRANSIENT = new Set(['unavailable', 'shard_unavailable', 'internal', 'rate_limited']);
// How long a seated viewer's connection may take to carry media before the page gives up
// on WebRTC (where the broadcast has HLS).
const CONNECT_TIMEOUT_MS = 10_000;
// How long an HLS player may show nothing new before it starts over.
const STALL_RESTART_MS = 12_000;
// Sockets closed in a row before joining, after which WebRTC signaling counts as blocked.
const FAILED_SOCKETS_FOR_HLS = 3;

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
  // `webrtc` or `hls`.
  mode: 'webrtc',
  // The broadcast's playlist, when it is packaged as HLS.
  hlsUrl: null,
  hls: null,
  hlsVideo: null,
  connectTimer: null,
  failedSockets: 0,
  hlsRetries: 0,
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
  let connected = false;
  pc.addEventListener('connectionstatechange', () => {
    if (pc.connectionState === 'connected') {
      connected = true;
      clearTimeout(state.connectTimer);
    }
    // A connection that never carried media: this network does not let WebRTC through.
    // One that did and then failed (a network change) is joined again as usual.
    if (pc.connectionState === 'failed' && !connected && state.sub === pc && state.hlsUrl) {
      startHls('no_webrtc');
    }
  });
  // Counted from the first offer: a stage without tracks yet sends none, and that is not
  // this network's fault.
  clearTimeout(state.connectTimer);
  if (state.hlsUrl) {
    state.connectTimer = setTimeout(() => {
      if (state.mode === 'webrtc' && state.sub === pc && !connected) startHls('no_webrtc');
    }, CONNECT_TIMEOUT_MS);
  }
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

/** Ends this page's session: its connection, its socket, and what either still had queued. */
function leaveSession() {
  state.connection += 1;
  state.joined = false;
  closeConnection();
  if (state.ws) {
    const old = state.ws;
    state.ws = null;
    old.close();
  }
}

function retry(reason) {
  if (state.mode === 'hls') return;
  clearTimeout(state.connectTimer);
  leaveSession();
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
      state.failedSockets = 0;
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
    case 'recording':
      // The stage's shard says so, through the edge this viewer is seated on.
      $('#recording').hidden = message.active !== true;
      break;
    case 'reconnect':
      retry(null);
      break;
    case 'left':
      retry(null);
      break;
    case 'error':
      if (message.code === 'use_hls' && state.hlsUrl) {
        startHls('use_hls');
      } else if (TRANSIENT.has(message.code) && !state.joined) {
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

/** Loads the vendored hls.js once (`window.Hls`). */
function loadHlsJs() {
  if (window.Hls) return Promise.resolve(window.Hls);
  return new Promise((resolve, reject) => {
    const script = document.createElement('script');
    script.src = '/vendor/hls.light.min.js';
    script.onload = () => resolve(window.Hls);
    script.onerror = () => reject(new Error('hls.js did not load'));
    document.head.append(script);
  });
}

function showMode() {
  const badge = $('#mode');
  badge.classList.remove('hidden');
  badge.classList.toggle('hls', state.mode === 'hls');
  badge.textContent = state.mode === 'hls' ? 'HLS · delayed' : 'Real-time';
  $('#use-hls').classList.toggle('hidden', state.mode === 'hls' || !state.hlsUrl);
  $('#hls-note').classList.toggle('hidden', state.mode !== 'hls');
  $('#use-webrtc').classList.toggle('hidden', state.mode !== 'hls');
  $('#quality').closest('label').classList.toggle('hidden', state.mode === 'hls');
}

/** Leaves WebRTC and plays the broadcast's HLS; `reason` is shown (a MESSAGES key). */
async function startHls(reason) {
  if (state.mode === 'hls' || !state.hlsUrl) return;
  state.mode = 'hls';
  clearTimeout(state.connectTimer);
  clearTimeout(state.retryTimer);
  leaveSession();
  showMode();
  showBanner(reason ? (MESSAGES[reason] || reason) : '');
  setStatus('Watching over HLS');
  const tile = $('#tile-template').content.firstElementChild.cloneNode(true);
  tile.dataset.name = 'stage';
  tile.classList.add('hls');
  tile.querySelector('.name').textContent = state.broadcast;
  $('#grid').append(tile);
  const video = tile.querySelector('video');
  state.hlsVideo = video;
  const play = () => video.play().catch(() => {
    document.addEventListener('click', () => video.play().catch(() => {}), { once: true });
  });
  const Hls = window.MediaSource ? await loadHlsJs().catch(() => null) : null;
  if (Hls && Hls.isSupported()) {
    attachHls(Hls, video, play);
  } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
    video.src = state.hlsUrl;
    play();
  } else {
    showBanner('This browser can play neither WebRTC nor HLS.');
  }
}

/**
 * Plays the playlist in `video` with hls.js, starting over after a fatal error: the
 * playlist may not exist yet (the stage is not on the air), or be a new one (the stage
 * moved to another shard). A decoder error is recovered in place.
 */
function attachHls(Hls, video, play) {
  // No worker: the page's policy allows scripts from the gateway only, not blob: ones.
  const hls = new Hls({
    enableWorker: false, liveSyncDurationCount: 2, liveMaxLatencyDurationCount: 5, backBufferLength: 30,
  });
  state.hls = hls;
  hls.on(Hls.Events.MANIFEST_PARSED, play);
  hls.on(Hls.Events.FRAG_BUFFERED, () => {
    state.hlsRetries = 0;
    setStatus('Watching over HLS');
  });
  hls.on(Hls.Events.ERROR, (_, data) => {
    if (!data.fatal || state.hls !== hls) return;
    setStatus('Waiting for the stage…');
    if (data.type === Hls.ErrorTypes.MEDIA_ERROR && state.hlsRetries < 3) {
      state.hlsRetries += 1;
      hls.recoverMediaError();
      return;
    }
    const delay = Math.min(1000 * 2 ** state.hlsRetries, 8000);
    state.hlsRetries += 1;
    hls.destroy();
    setTimeout(() => {
      if (state.hls === hls) attachHls(Hls, video, play);
    }, delay);
  });
  hls.loadSource(state.hlsUrl);
  hls.attachMedia(video);
  // A player that shows nothing new for a while starts over, whatever stalled it.
  let last = { time: -1, since: Date.now() };
  const watchdog = setInterval(() => {
    if (state.hls !== hls) {
      clearInterval(watchdog);
      return;
    }
    if (video.currentTime !== last.time || video.paused && video.readyState >= 2) {
      last = { time: video.currentTime, since: Date.now() };
    } else if (Date.now() - last.since > STALL_RESTART_MS) {
      clearInterval(watchdog);
      setStatus('Waiting for the stage…');
      hls.destroy();
      attachHls(Hls, video, play);
    }
  }, 1000);
}

let queue = Promise.resolve();

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${scheme}://${location.host}/v1/ws`);
  state.ws = ws;
  let opened = false;
  ws.addEventListener('open', () => { opened = true; });
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
    // Only sockets that never opened: a gateway restarting closes open ones.
    if (!opened) state.failedSockets += 1;
    if (state.failedSockets >= FAILED_SOCKETS_FOR_HLS && state.hlsUrl) {
      startHls('no_webrtc');
      return;
    }
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
      totalAudioEnergy: stat.totalAudioEnergy || 0,
    });
  });
  return rows;
}

/** What an HLS viewer observes: the playback position, frames shown, and the delay hls.js estimates. */
function hlsStats() {
  const video = state.hlsVideo;
  if (!video) return null;
  const quality = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : {};
  return {
    currentTime: video.currentTime,
    frames: quality.totalVideoFrames || 0,
    width: video.videoWidth,
    height: video.videoHeight,
    latency: state.hls ? state.hls.latency : null,
  };
}

window.tutti = {
  state, inboundStats, hlsStats, mode: () => state.mode, recordingShown: () => !$('#recording').hidden,
};

async function init() {
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
  $('#use-hls').addEventListener('click', () => startHls(''));
  $('#use-webrtc').addEventListener('click', () => {
    location.search = `?broadcast=${encodeURIComponent(state.broadcast)}&hls=0`;
  });
  // Whether the broadcast also goes out as HLS, before anything else is tried.
  let info = null;
  try {
    const response = await fetch(`/v1/broadcasts/${encodeURIComponent(state.broadcast)}`);
    if (response.ok) info = await response.json();
  } catch {
    info = null;
  }
  state.hlsUrl = info?.hls || null;
  showMode();
  if (state.hlsUrl && (params.get('hls') === '1' || typeof RTCPeerConnection === 'undefined')) {
    startHls(params.get('hls') === '1' ? '' : 'no_webrtc');
    return;
  }
  connect();
}

init();
