// Tutti web client: joins a room through the gateway's WebSocket (protocol v1,
// docs/protocol.md), publishes camera and microphone on one peer connection and receives
// everyone else on another, both to the room's SFU shard.
//
// The publisher connection is ours to offer on; the subscriber connection is the shard's.
// Each side only ever offers on its own connection, so renegotiation never collides.
//
// A room's audio profile (`joined.audio`) decides how the microphone is captured: speech
// keeps the browser's echo cancellation, noise suppression and gain control; music turns
// them off, asks for stereo and sends at the room's bitrate, and keeps receive buffers
// short. A media connection that fails is restarted (ICE restart) without leaving the
// room.

import { preferStereo } from './sdp.js';
import { measureRegions } from './regions.js';

const ERROR_TEXT = {
  room_full: 'This room is full. Try again when someone leaves.',
  wrong_password: 'That password is not right.',
  password_required: 'This room needs a password.',
  nickname_taken: 'Someone in this room already uses that name. Please pick another one.',
  use_hls: 'The broadcast\'s real-time audience is full: watch it over HLS.',
  room_not_found: 'There is no room with that name.',
  unauthorized: 'Your invitation is not valid or has expired. Ask for a new link.',
  bad_message: 'The server did not understand a message from this page. Reload and try again.',
  unsupported_version: 'This page is out of date. Reload it.',
  not_joined: 'Not in a room yet.',
  already_joined: 'Already in a room.',
  out_of_order: 'A connection step came out of order; reconnecting may help.',
  forbidden: 'You are not allowed to do that in this room.',
  sdp_rejected: 'The media connection could not be set up.',
  codec_unsupported: 'Your browser cannot play one of the streams in this room.',
  track_not_found: 'That stream is no longer there.',
  participant_not_found: 'That person has left the room.',
  shard_unavailable: 'No media server can take this room right now. Try again in a moment.',
  unavailable: 'The service is partly down: new joins are paused, calls already running go on. Try again in a moment.',
  rate_limited: 'Slow down: too many messages.',
  slow_consumer: 'Your connection fell behind; reconnecting.',
  internal: 'Something went wrong on the server.',
  media_denied: 'Camera and microphone are blocked. You can still watch and listen.',
  connection_lost: 'The connection to the server was lost.',
};

const $ = (selector) => document.querySelector(selector);

const state = {
  ws: null,
  // Counts sockets and reconnects: what a socket that a reconnect replaced still had
  // queued is dropped (see connect()).
  connection: 0,
  credentials: null, // { room, name, password, token }
  resume: null, // from `joined`: come back as the same participant after a reconnect
  reconnecting: false,
  me: null, // our participant id
  myName: '',
  joined: false,
  leaving: false,
  iceServers: [],
  rtt: null,
  relayOnly: false,
  simulcast: false, // from `joined`: send three video layers
  svc: null, // from `joined`: the codec (video/VP9, video/AV1) to send spatial layers in, in one stream, where the browser can
  videoSenderTrackId: null, // the camera track's id in the publisher's offer
  audio: { profile: 'speech' }, // from `joined`: the room's audio profile and Opus tuning
  capturedProfile: null, // the profile the microphone was captured for
  devices: loadDevices(), // chosen microphone, camera and speakers (device ids)
  iceRestart: false, // the next publisher offer restarts ICE
  participants: new Map(), // id -> { name, tracks: Map(trackId -> info), screen, tile, stream }
  trackOwner: new Map(), // received track id -> participant id
  localStream: null,
  micTrack: null,
  camTrack: null,
  screenTrack: null,
  audioSender: null,
  videoSender: null,
  pub: null,
  sub: null,
  pubNegotiating: false,
  pubAgain: false,
  answerWaiter: null,
  reconnectDelay: 500,
  recording: false, // a recorder is in the room
  reconnectTimer: null,
  askedForSound: false,
  queue: Promise.resolve(),
};

// ---------------------------------------------------------------- helpers

function loadDevices() {
  try {
    return { mic: '', cam: '', speaker: '', ...JSON.parse(localStorage.getItem('tutti.devices') || '{}') };
  } catch {
    return { mic: '', cam: '', speaker: '' };
  }
}

function saveDevices() {
  try {
    localStorage.setItem('tutti.devices', JSON.stringify(state.devices));
  } catch {
    // Private windows may refuse storage: the choice lasts this visit.
  }
}

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ v: 1, ...message }));
  }
}

function setStatus(text) {
  $('#status').textContent = text;
}

// Everyone in a room sees while a recorder is in it (the shard's `recording` message).
function setRecording(active) {
  state.recording = active;
  $('#recording').hidden = !active;
}

function showError(code, message) {
  const text = ERROR_TEXT[code] || message || code;
  $('#banner-text').textContent = text;
  $('#banner').dataset.code = code;
  $('#banner').classList.remove('hidden');
}

function clearError() {
  $('#banner').classList.add('hidden');
  delete $('#banner').dataset.code;
}

// Signaling steps run one at a time, in arrival order.
function enqueue(step) {
  state.queue = state.queue.then(step).catch((err) => console.error('signaling step failed', err));
}

function initials(name) {
  return (name || '?').trim().slice(0, 1).toUpperCase();
}

// ---------------------------------------------------------------- lobby

function readDeepLink() {
  const params = new URLSearchParams(location.search);
  const link = {
    room: params.get('room') || '',
    name: params.get('name') || '',
    password: params.get('password') || '',
    token: params.get('token') || '',
    // The audio profile for a room this join creates (a declared room keeps its own).
    audio: ['music', 'speech'].includes(params.get('audio')) ? params.get('audio') : '',
  };
  state.relayOnly = params.get('relay') === '1';
  if (link.password || link.token) {
    // Keep secrets out of the address bar and history once read.
    params.delete('password');
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : ''));
  }
  return link;
}

async function refreshRooms() {
  const query = $('#room-search').value.trim();
  try {
    const response = await fetch(`/v1/rooms?limit=50${query ? `&q=${encodeURIComponent(query)}` : ''}`);
    if (!response.ok) return;
    const { rooms } = await response.json();
    const list = $('#room-list');
    list.replaceChildren();
    for (const room of rooms) {
      const item = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      const label = document.createElement('span');
      label.textContent = room.hasPassword ? `${room.name} (password)` : room.name;
      const count = document.createElement('span');
      count.textContent = `${room.participants}/${room.maxParticipants}`;
      button.append(label, count);
      button.addEventListener('click', () => {
        $('#room').value = room.name;
        $('#name').focus();
      });
      item.append(button);
      list.append(item);
    }
    $('#room-list-empty').classList.toggle('hidden', rooms.length > 0);
  } catch (err) {
    console.warn('room list unavailable', err);
  }
}

function showLobby() {
  $('#call').classList.add('hidden');
  $('#lobby').classList.remove('hidden');
  $('#room-title').textContent = '';
  setStatus('');
  refreshRooms();
}

// The room list stays current while the lobby is open.
setInterval(() => {
  if (!$('#lobby').classList.contains('hidden') && document.visibilityState === 'visible') {
    refreshRooms();
  }
}, 5000);

function showCall() {
  $('#lobby').classList.add('hidden');
  $('#call').classList.remove('hidden');
  $('#room-title').textContent = state.credentials.room;
}

// ---------------------------------------------------------------- local media

// What the microphone is asked for. Music: an instrument through an audio interface must
// reach the others as it sounds, so no echo cancellation (wear headphones), no noise
// suppression (a held note is not noise), no gain control, and stereo where the device has
// it.
function audioConstraints(profile) {
  const device = state.devices.mic ? { deviceId: { exact: state.devices.mic } } : {};
  if (profile === 'music') {
    return {
      ...device,
      echoCancellation: false,
      noiseSuppression: false,
      autoGainControl: false,
      channelCount: { ideal: 2 },
      sampleRate: { ideal: 48000 },
    };
  }
  return { ...device, echoCancellation: true, noiseSuppression: true, autoGainControl: true };
}

function videoConstraints() {
  const device = state.devices.cam ? { deviceId: { exact: state.devices.cam } } : {};
  return { ...device, width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } };
}

async function startLocalMedia(profile) {
  if (state.localStream) return;
  const note = $('#media-note');
  try {
    state.localStream = await navigator.mediaDevices.getUserMedia({
      audio: audioConstraints(profile),
      video: videoConstraints(),
    });
    note.textContent = '';
  } catch (videoError) {
    // No camera, or the camera is denied: carry on with the microphone alone.
    try {
      state.localStream = await navigator.mediaDevices.getUserMedia({ audio: audioConstraints(profile) });
      note.textContent = `No camera (${videoError.name}): you joined with audio only.`;
    } catch (audioError) {
      state.localStream = new MediaStream();
      note.textContent = ERROR_TEXT.media_denied;
    }
  }
  state.micTrack = state.localStream.getAudioTracks()[0] || null;
  state.camTrack = state.localStream.getVideoTracks()[0] || null;
  state.capturedProfile = state.micTrack ? profile : null;
  $('#toggle-mic').disabled = !state.micTrack;
  $('#toggle-cam').disabled = !state.camTrack;
}

// Captures the microphone again (another profile or device) and sends the new track.
async function recaptureMic() {
  if (!state.micTrack) return;
  const old = state.micTrack;
  const stream = await navigator.mediaDevices.getUserMedia({ audio: audioConstraints(state.audio.profile) });
  const track = stream.getAudioTracks()[0];
  track.enabled = old.enabled;
  state.localStream.removeTrack(old);
  state.localStream.addTrack(track);
  state.micTrack = track;
  state.capturedProfile = state.audio.profile;
  if (state.audioSender) await state.audioSender.replaceTrack(track);
  old.stop();
}

// Music: send at the room's bitrate, ahead of video when the uplink is short.
function audioEncoding() {
  if (state.audio.profile !== 'music') return {};
  return { maxBitrate: state.audio.bitrate || 128000, priority: 'high', networkPriority: 'high' };
}

// ---------------------------------------------------------------- devices

async function fillDevicePickers() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  const pickers = [
    ['#pick-mic', 'audioinput', 'mic', state.micTrack],
    ['#pick-cam', 'videoinput', 'cam', state.camTrack],
    ['#pick-speaker', 'audiooutput', 'speaker', null],
  ];
  for (const [selector, kind, key, track] of pickers) {
    const select = $(selector);
    const current = state.devices[key] || track?.getSettings().deviceId || '';
    select.replaceChildren();
    const found = devices.filter((d) => d.kind === kind);
    for (const [index, device] of found.entries()) {
      select.append(new Option(device.label || `${kind} ${index + 1}`, device.deviceId));
    }
    if (found.some((d) => d.deviceId === current)) select.value = current;
    select.disabled = found.length === 0 || (kind === 'audiooutput' && !('setSinkId' in HTMLMediaElement.prototype));
  }
}

async function chooseMic(deviceId) {
  state.devices.mic = deviceId;
  saveDevices();
  await recaptureMic();
}

async function chooseCam(deviceId) {
  state.devices.cam = deviceId;
  saveDevices();
  if (!state.camTrack) return;
  const stream = await navigator.mediaDevices.getUserMedia({ video: videoConstraints() });
  const track = stream.getVideoTracks()[0];
  const old = state.camTrack;
  track.enabled = old.enabled;
  state.localStream.removeTrack(old);
  state.localStream.addTrack(track);
  state.camTrack = track;
  if (state.videoSender && !state.screenTrack) await state.videoSender.replaceTrack(track);
  old.stop();
  renderLocalTile();
}

async function chooseSpeaker(deviceId) {
  state.devices.speaker = deviceId;
  saveDevices();
  for (const video of document.querySelectorAll('.tile:not(.local) video')) await applySpeaker(video);
}

async function applySpeaker(element) {
  if (!state.devices.speaker || typeof element.setSinkId !== 'function') return;
  try {
    await element.setSinkId(state.devices.speaker);
  } catch (err) {
    console.warn('cannot play on the chosen speakers', err);
  }
}

function stopLocalMedia() {
  for (const track of [state.micTrack, state.camTrack, state.screenTrack]) {
    if (track) track.stop();
  }
  state.localStream = null;
  state.micTrack = null;
  state.camTrack = null;
  state.screenTrack = null;
}

// ---------------------------------------------------------------- tiles

function makeTile(id, name, local) {
  const tile = $('#tile-template').content.firstElementChild.cloneNode(true);
  tile.dataset.participant = id;
  tile.dataset.name = name;
  tile.classList.toggle('local', local);
  tile.querySelector('.name').textContent = local ? `${name} (you)` : name;
  tile.querySelector('.avatar').textContent = initials(name);
  const video = tile.querySelector('video');
  video.muted = local;
  if (!local) {
    applySpeaker(video);
    tileWatch.sight.observe(tile);
    tileWatch.size.observe(video);
  }
  $('#grid').append(tile);
  return tile;
}

function renderLocalTile() {
  let tile = document.querySelector('.tile.local');
  if (!tile) tile = makeTile(state.me, state.myName, true);
  tile.dataset.participant = state.me;
  const video = tile.querySelector('video');
  const shown = state.screenTrack || state.camTrack;
  video.srcObject = shown ? new MediaStream([shown]) : null;
  tile.classList.toggle('no-video', !shown || (shown === state.camTrack && !state.camTrack.enabled));
  tile.classList.toggle('sharing', Boolean(state.screenTrack));
  tile.querySelector('.mic-off').classList.toggle('hidden', !state.micTrack || state.micTrack.enabled);
  tile.querySelector('.sharing').classList.toggle('hidden', !state.screenTrack);
}

function addParticipant(info) {
  if (info.id === state.me || state.participants.has(info.id)) return;
  const participant = {
    name: info.name,
    tracks: new Map(),
    screen: Boolean(info.screen_sharing),
    stream: new MediaStream(),
    tile: makeTile(info.id, info.name, false),
  };
  participant.tile.querySelector('video').srcObject = participant.stream;
  state.participants.set(info.id, participant);
  for (const track of info.tracks || []) addTrackInfo(info.id, track);
  updateTile(info.id);
  updateRecipients();
}

function removeParticipant(id) {
  const participant = state.participants.get(id);
  if (!participant) return;
  tileWatch.sight.unobserve(participant.tile);
  tileWatch.size.unobserve(participant.tile.querySelector('video'));
  participant.tile.remove();
  for (const trackId of participant.tracks.keys()) state.trackOwner.delete(trackId);
  state.participants.delete(id);
  updateRecipients();
}

function addTrackInfo(participantId, track) {
  const participant = state.participants.get(participantId);
  if (!participant) return;
  // `quality`: what this page last asked the shard for; a new track starts at high.
  participant.tracks.set(track.id, { kind: track.kind, codec: track.codec, muted: Boolean(track.muted), quality: 'high' });
  state.trackOwner.set(track.id, participantId);
  scheduleQualityCheck();
}

// ---------------------------------------------------------------- adaptive stream

// Each received video is asked for at the size its tile shows it: a tile at most this
// many device pixels wide gets the low or the middle simulcast layer (a quarter and a
// half of the camera's width: 320 and 640 of a 1280-pixel camera, 160 and 320 of a
// 640-pixel one), a wider tile the full one. A tile out of sight, or a page in the
// background, gets none: the shard sends nothing for it, and a layer nobody receives
// stops being encoded at its publisher.
const LAYER_FOR_WIDTH = [[240, 'low'], [560, 'medium']];

const tileWatch = {
  sight: new IntersectionObserver((entries) => {
    for (const entry of entries) entry.target.dataset.onScreen = String(entry.isIntersecting);
    scheduleQualityCheck();
  }),
  size: new ResizeObserver(() => scheduleQualityCheck()),
  timer: null,
};

function wantedQuality(participant) {
  const tile = participant.tile;
  if (document.hidden || tile.dataset.onScreen !== 'true') return 'off';
  const width = tile.querySelector('video').clientWidth * (window.devicePixelRatio || 1);
  if (width === 0) return 'off';
  for (const [widest, quality] of LAYER_FOR_WIDTH) if (width <= widest) return quality;
  return 'high';
}

// Sizes change in bursts (a window dragged wider): ask once they settle.
function scheduleQualityCheck() {
  if (tileWatch.timer !== null) return;
  tileWatch.timer = setTimeout(() => {
    tileWatch.timer = null;
    askForQualities();
  }, 150);
}

function askForQualities() {
  if (!state.joined) return;
  for (const participant of state.participants.values()) {
    const quality = wantedQuality(participant);
    for (const [track, info] of participant.tracks) {
      if (info.kind !== 'video' || info.quality === quality) continue;
      info.quality = quality;
      send({ type: 'set_quality', track, quality });
    }
  }
}

// Each tile shows how that participant's connection is doing (yours on your own tile).
const QUALITY_TEXT = {
  good: 'Connection: good',
  fair: 'Connection: fair (some loss, a long round trip, or video held back)',
  poor: 'Connection: poor (heavy loss, a very long round trip, or video paused)',
};

function showQualities(qualities) {
  for (const { participant, quality } of qualities || []) {
    const tile = participant === state.me
      ? document.querySelector('.tile.local')
      : state.participants.get(participant)?.tile;
    const dot = tile?.querySelector('.quality');
    if (!dot || !QUALITY_TEXT[quality]) continue;
    dot.dataset.quality = quality;
    dot.title = QUALITY_TEXT[quality];
    dot.setAttribute('aria-label', QUALITY_TEXT[quality]);
    dot.classList.remove('hidden');
  }
}

// What the shard says nobody receives is not encoded (dynacast): each simulcast encoding
// is switched on or off as asked.
async function publishLayers({ track, active, spatial }) {
  const sender = state.videoSender;
  if (!sender || track !== state.videoSenderTrackId) return;
  const parameters = sender.getParameters();
  if (spatial) {
    await publishSpatialLayers(sender, parameters, spatial);
    return;
  }
  if (!parameters.encodings || parameters.encodings.length < 2) return;
  let changed = false;
  for (const encoding of parameters.encodings) {
    const on = active.includes(encoding.rid);
    if (encoding.active !== on) {
      encoding.active = on;
      changed = true;
    }
  }
  if (changed) await sender.setParameters(parameters);
}

// The SVC camera's bitrate cap with all its layers.
const SVC_MAX_BITRATE = 1_500_000;

// An SVC camera encodes only the lowest `encode` of its `of` spatial layers (nobody
// receives the others): fewer layers, the top one scaled to the width of the highest kept
// (as the encoder's own structure gave it to the shard; else by halves), so that
// subscribers' layers keep their sizes; none at all, inactive. Fewer layers get the
// bitrate those layers had: libwebrtc gives a single layer the whole encoding's cap.
async function publishSpatialLayers(sender, parameters, { encode, of, width }) {
  const [encoding] = parameters.encodings || [];
  if (!encoding || parameters.encodings.length !== 1 || !encoding.scalabilityMode) return;
  const keep = Math.min(encode, of);
  const wanted = { active: keep > 0 };
  if (keep >= of) {
    Object.assign(wanted, { scalabilityMode: SVC_MODE, scaleResolutionDownBy: 1, maxBitrate: SVC_MAX_BITRATE });
  } else if (keep > 0) {
    const settings = state.camTrack?.getSettings() || {};
    const full = settings.width || 0;
    const scale = width > 0 && full > width ? full / width : 2 ** (of - keep);
    const aspect = full > 0 && settings.height ? settings.height / full : 0.75;
    // libwebrtc's cap of a spatial layer of w×h pixels: 1.6 bit a pixel per 1000, plus
    // 50 kbit/s; the kept layers halve in width downwards from the top one.
    let maxBitrate = 0;
    for (let layer = 0; layer < keep; layer += 1) {
      const w = (full / scale) / 2 ** layer;
      maxBitrate += (1.6 * w * w * aspect) + 50_000;
    }
    Object.assign(wanted, {
      scalabilityMode: keep === 1 ? 'L1T3' : `L${keep}T3_KEY`,
      scaleResolutionDownBy: scale,
      maxBitrate: Math.min(SVC_MAX_BITRATE, Math.round(maxBitrate)),
    });
  }
  const changed = Object.entries(wanted).some(([key, value]) => encoding[key] !== value);
  if (!changed) return;
  Object.assign(encoding, wanted);
  await sender.setParameters(parameters);
}

function updateTile(id) {
  const participant = state.participants.get(id);
  if (!participant) return;
  const tracks = [...participant.tracks.values()];
  const video = tracks.find((t) => t.kind === 'video');
  const audio = tracks.find((t) => t.kind === 'audio');
  const tile = participant.tile;
  tile.classList.toggle('no-video', !video || video.muted);
  tile.classList.toggle('screen', participant.screen);
  tile.querySelector('.mic-off').classList.toggle('hidden', !audio || !audio.muted);
  tile.querySelector('.cam-off').classList.toggle('hidden', !video || !video.muted);
  tile.querySelector('.sharing').classList.toggle('hidden', !participant.screen);
}

function updateRecipients() {
  const select = $('#chat-to');
  const chosen = select.value;
  select.replaceChildren(new Option('Everyone', ''));
  for (const [id, participant] of state.participants) {
    select.append(new Option(participant.name, id));
  }
  select.value = state.participants.has(chosen) ? chosen : '';
}

function setActiveSpeaker(id) {
  for (const tile of document.querySelectorAll('.tile')) {
    tile.classList.toggle('speaking', id !== null && tile.dataset.participant === id);
  }
}

// ---------------------------------------------------------------- chat

function appendMessage({ from, name, text, to }) {
  const item = document.createElement('li');
  const who = document.createElement('span');
  who.className = 'from';
  if (to) {
    item.classList.add('private');
    const target = to === state.me ? 'you' : (state.participants.get(to)?.name || to);
    who.textContent = `${from === state.me ? 'You' : name} → ${target} (private):`;
  } else {
    who.textContent = `${from === state.me ? 'You' : name}:`;
  }
  item.dataset.from = from;
  if (to) item.dataset.to = to;
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  item.append(who, body);
  $('#messages').append(item);
  item.scrollIntoView({ block: 'end' });
}

function appendNotice(text) {
  const item = document.createElement('li');
  item.className = 'system';
  item.textContent = text;
  $('#messages').append(item);
}

// ---------------------------------------------------------------- peer connections

function rtcConfig() {
  return {
    iceServers: state.iceServers,
    iceTransportPolicy: state.relayOnly ? 'relay' : 'all',
    bundlePolicy: 'max-bundle',
  };
}

// A connection whose ICE fails, or stays disconnected for a few seconds, is restarted:
// the session, the seat and the tracks stay; the others see a freeze, not a departure.
const DISCONNECTED_GRACE_MS = 3000;

function watchConnection(pc, target) {
  let timer = null;
  pc.addEventListener('iceconnectionstatechange', () => {
    clearTimeout(timer);
    const ice = pc.iceConnectionState;
    if (ice === 'failed') {
      restartIce(pc, target);
    } else if (ice === 'disconnected') {
      timer = setTimeout(() => {
        if (pc.iceConnectionState === 'disconnected') restartIce(pc, target);
      }, DISCONNECTED_GRACE_MS);
    } else if (ice === 'connected' || ice === 'completed') {
      if (state.joined) setStatus('Connected');
    }
  });
}

function restartIce(pc, target) {
  if (pc !== (target === 'publisher' ? state.pub : state.sub) || !state.joined) return;
  setStatus('Reconnecting media…');
  state.mediaRestarts = (state.mediaRestarts || 0) + 1;
  if (target === 'publisher') {
    state.iceRestart = true;
    negotiatePublisher().catch((err) => console.error('ICE restart failed', err));
  } else {
    send({ type: 'restart_ice' });
  }
}

function trickle(pc, target) {
  pc.addEventListener('icecandidate', ({ candidate }) => {
    if (candidate && candidate.candidate) {
      send({
        type: 'candidate',
        pc: target,
        candidate: candidate.candidate,
        sdpMid: candidate.sdpMid,
        sdpMLineIndex: candidate.sdpMLineIndex,
      });
    }
  });
}

// The scalability mode of an SVC camera: upper spatial layers reference the ones below
// only at key pictures (as Chromium's own SVC calls do), so the shard can send a
// subscriber the lower layers alone from any picture on.
const SVC_MODE = 'L3T3_KEY';

// The video codecs in the order that makes `mime` (video/VP9 or video/AV1) the one
// negotiated, if this browser says it can encode the camera in it and SVC_MODE
// (WebRTC-SVC's discovery, through Media Capabilities); null if it does not, or cannot
// say: a browser that would send one layer, which a narrow downlink could only pause,
// sends simulcast instead.
async function svcCodecs(track, mime) {
  const codecs = window.RTCRtpSender?.getCapabilities?.('video')?.codecs || [];
  const chosen = codecs.filter((c) => c.mimeType.toLowerCase() === mime.toLowerCase());
  if (!chosen.length || !navigator.mediaCapabilities?.encodingInfo) return null;
  const { width = 640, height = 480, frameRate = 30 } = track.getSettings();
  try {
    const { supported } = await navigator.mediaCapabilities.encodingInfo({
      type: 'webrtc',
      video: {
        contentType: mime, width, height, framerate: frameRate, bitrate: 1_500_000, scalabilityMode: SVC_MODE,
      },
    });
    if (!supported) return null;
  } catch {
    return null;
  }
  return [...chosen, ...codecs.filter((c) => !chosen.includes(c))];
}

// The simulcast encodings of the camera: three layers, each in three temporal layers.
function simulcastEncodings() {
  return [
    { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000, scalabilityMode: 'L1T3' },
    { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000, scalabilityMode: 'L1T3' },
    { rid: 'f', maxBitrate: 1_500_000, scalabilityMode: 'L1T3' },
  ];
}

async function startPublishing() {
  const pc = new RTCPeerConnection(rtcConfig());
  state.pub = pc;
  trickle(pc, 'publisher');
  watchConnection(pc, 'publisher');
  if (state.micTrack) {
    state.audioSender = pc.addTransceiver(state.micTrack, {
      direction: 'sendonly',
      streams: [state.localStream],
      sendEncodings: [audioEncoding()],
    }).sender;
  }
  if (state.camTrack) {
    const init = { direction: 'sendonly', streams: [state.localStream] };
    // Three layers, so that each subscriber gets the one its tile and network need, each in
    // three temporal layers (L1T3), so that a narrow downlink can get fewer frames.
    // Chromium sends VP8 simulcast as L1T3 by itself; with VP9 negotiated and no mode
    // named it sent only the lowest layer, its uplink estimate stuck at what that needs.
    const svcCodecOrder = state.svc ? await svcCodecs(state.camTrack, state.svc) : null;
    if (state.simulcast) init.sendEncodings = simulcastEncodings();
    let transceiver;
    if (svcCodecOrder) {
      // Or, where the room asks for it, one VP9 or AV1 stream of three spatial layers
      // (fewer where the camera is small), each in three temporal layers: the shard sends
      // each subscriber the layers up to the size it needs, from one encoder.
      try {
        transceiver = pc.addTransceiver(state.camTrack, { ...init, sendEncodings: [{ maxBitrate: SVC_MAX_BITRATE, scalabilityMode: SVC_MODE }] });
        transceiver.setCodecPreferences(svcCodecOrder);
      } catch (error) {
        // Refused after all: simulcast, as in any other room.
        console.warn(`${state.svc} SVC refused; sending simulcast`, error);
        transceiver?.stop();
        transceiver = null;
      }
    }
    if (!transceiver) {
      try {
        transceiver = pc.addTransceiver(state.camTrack, init);
      } catch (error) {
        // A browser that knows no scalability modes: the layers without one.
        if (!init.sendEncodings) throw error;
        init.sendEncodings = init.sendEncodings.map(({ scalabilityMode, ...layer }) => layer);
        transceiver = pc.addTransceiver(state.camTrack, init);
      }
    }
    state.videoSender = transceiver.sender;
    // The shard names the track by the id it had in the offer, whatever replaces it later.
    state.videoSenderTrackId = state.camTrack.id;
  }
  if (state.audioSender || state.videoSender) await negotiatePublisher();
}

// Offers on the publisher connection, one offer in flight at a time.
async function negotiatePublisher() {
  if (state.pubNegotiating) {
    state.pubAgain = true;
    return;
  }
  state.pubNegotiating = true;
  try {
    do {
      state.pubAgain = false;
      const pc = state.pub;
      if (!pc) return;
      const iceRestart = state.iceRestart;
      state.iceRestart = false;
      await pc.setLocalDescription(await pc.createOffer({ iceRestart }));
      const answered = new Promise((resolve, reject) => {
        state.answerWaiter = { resolve, reject };
      });
      send({ type: 'offer', pc: 'publisher', sdp: pc.localDescription.sdp });
      await answered;
    } while (state.pubAgain);
  } finally {
    state.pubNegotiating = false;
  }
}

async function onPublisherAnswer(sdp) {
  if (!state.pub) return;
  await state.pub.setRemoteDescription({ type: 'answer', sdp });
  const waiter = state.answerWaiter;
  state.answerWaiter = null;
  if (waiter) waiter.resolve();
}

function subscriber() {
  if (state.sub) return state.sub;
  const pc = new RTCPeerConnection(rtcConfig());
  state.sub = pc;
  trickle(pc, 'subscriber');
  watchConnection(pc, 'subscriber');
  pc.addEventListener('track', ({ track, streams, receiver }) => {
    // In music rooms a participant's sound comes in a stream of its own (so that the
    // browser does not hold it back to keep lips in sync): find the owner by track first.
    const owner = state.trackOwner.get(track.id) || streams[0]?.id;
    if (track.kind === 'audio' && state.audio.profile === 'music' && 'jitterBufferTarget' in receiver) {
      receiver.jitterBufferTarget = 0;
    }
    const participant = state.participants.get(owner);
    if (!participant) return;
    for (const old of participant.stream.getTracks().filter((t) => t.kind === track.kind)) {
      participant.stream.removeTrack(old);
    }
    participant.stream.addTrack(track);
    const video = participant.tile.querySelector('video');
    video.srcObject = participant.stream;
    video.play().catch(() => askForSound());
    track.addEventListener('ended', () => participant.stream.removeTrack(track));
  });
  return pc;
}

async function onSubscriberOffer(sdp) {
  const pc = subscriber();
  await pc.setRemoteDescription({ type: 'offer', sdp });
  const answer = await pc.createAnswer();
  if (state.audio.profile === 'music') answer.sdp = preferStereo(answer.sdp);
  await pc.setLocalDescription(answer);
  send({ type: 'answer', pc: 'subscriber', sdp: pc.localDescription.sdp });
}

// Browsers may refuse to play sound before the user has touched the page (a receive-only
// participant never granted the microphone): ask once, then play everything.
function askForSound() {
  if (state.askedForSound) return;
  state.askedForSound = true;
  appendNotice('Click anywhere on the page to hear the others.');
  document.addEventListener('click', () => {
    for (const video of document.querySelectorAll('.tile:not(.local) video')) {
      video.play().catch(() => {});
    }
  }, { once: true });
}

function closePeerConnections() {
  for (const pc of [state.pub, state.sub]) {
    if (pc) pc.close();
  }
  state.pub = null;
  state.sub = null;
  state.audioSender = null;
  state.videoSender = null;
  state.videoSenderTrackId = null;
  if (state.answerWaiter) state.answerWaiter.reject(new Error('connection closed'));
  state.answerWaiter = null;
  state.pubNegotiating = false;
}

// ---------------------------------------------------------------- controls

function toggleMic() {
  if (!state.micTrack) return;
  state.micTrack.enabled = !state.micTrack.enabled;
  const muted = !state.micTrack.enabled;
  $('#toggle-mic').setAttribute('aria-pressed', String(muted));
  $('#toggle-mic').textContent = muted ? 'Unmute mic' : 'Mute mic';
  send({ type: 'mute', track: state.micTrack.id, muted });
  renderLocalTile();
}

function toggleCam() {
  if (!state.camTrack) return;
  state.camTrack.enabled = !state.camTrack.enabled;
  const muted = !state.camTrack.enabled;
  $('#toggle-cam').setAttribute('aria-pressed', String(muted));
  $('#toggle-cam').textContent = muted ? 'Start video' : 'Stop video';
  send({ type: 'mute', track: state.camTrack.id, muted });
  renderLocalTile();
}

async function startScreenShare() {
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  } catch (err) {
    if (err.name !== 'NotAllowedError' && err.name !== 'AbortError') {
      showError('media', `Screen sharing is not available: ${err.message}`);
    }
    return;
  }
  const track = stream.getVideoTracks()[0];
  if (!track) return;
  state.screenTrack = track;
  track.addEventListener('ended', () => enqueue(stopScreenShare));
  if (state.videoSender) {
    // The screen takes the camera's place on the same sender: no renegotiation.
    await state.videoSender.replaceTrack(track);
  } else if (state.pub) {
    state.videoSender = state.pub.addTransceiver(track, {
      direction: 'sendonly',
      streams: [state.localStream],
    }).sender;
    await negotiatePublisher();
  }
  send({ type: 'screen_share', active: true });
  $('#toggle-screen').setAttribute('aria-pressed', 'true');
  $('#toggle-screen').textContent = 'Stop sharing';
  renderLocalTile();
}

async function stopScreenShare() {
  const track = state.screenTrack;
  if (!track) return;
  state.screenTrack = null;
  track.stop();
  if (state.videoSender) {
    // Back to the camera (or to nothing, for a participant without one).
    await state.videoSender.replaceTrack(state.camTrack || null);
  }
  send({ type: 'screen_share', active: false });
  $('#toggle-screen').setAttribute('aria-pressed', 'false');
  $('#toggle-screen').textContent = 'Share screen';
  renderLocalTile();
}

function toggleScreen() {
  enqueue(() => (state.screenTrack ? stopScreenShare() : startScreenShare()));
}

// ---------------------------------------------------------------- session

function connect() {
  clearTimeout(state.reconnectTimer);
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${scheme}://${location.host}/v1/ws`);
  state.ws = ws;
  state.connection += 1;
  const connection = state.connection;
  // A reconnect ends what the old socket had to say: as a room moves, an answer sent a
  // moment too late draws `not_joined`, which handled after the reconnect would read as a
  // refused join and end the call.
  const current = () => state.connection === connection;
  setStatus('Connecting…');
  ws.addEventListener('open', () => {
    const { room, name, password, token, audio } = state.credentials;
    const join = { type: 'join', room };
    if (audio) join.audio = audio;
    if (name) join.name = name;
    if (password) join.password = password;
    if (token) join.token = token;
    if (state.resume) join.resume = state.resume;
    if (state.rtt) join.rtt = state.rtt;
    send(join);
  });
  ws.addEventListener('message', (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!current()) return;
    if (message.type === 'answer') {
      // Answers complete an offer that a queued step may be waiting on: never queue them
      // behind it.
      onPublisherAnswer(message.sdp).catch((err) => console.error('answer failed', err));
      return;
    }
    enqueue(() => (current() ? onMessage(message) : undefined));
  });
  ws.addEventListener('close', () => {
    if (state.ws !== ws) return;
    state.ws = null;
    if (state.joined && !state.leaving) scheduleReconnect('connection_lost');
  });
}

function scheduleReconnect(reason) {
  state.connection += 1;
  const first = !state.reconnecting;
  state.joined = false;
  state.reconnecting = true;
  setRecording(false);
  closePeerConnections();
  for (const id of [...state.participants.keys()]) removeParticipant(id);
  setStatus('Reconnecting…');
  if (first) {
    appendNotice(reason === 'connection_lost' ? ERROR_TEXT.connection_lost : `Reconnecting: ${reason}`);
  }
  const delay = state.reconnectDelay;
  state.reconnectDelay = Math.min(state.reconnectDelay * 2, 5000);
  if (state.ws) {
    const old = state.ws;
    state.ws = null;
    old.close();
  }
  state.reconnectTimer = setTimeout(connect, delay);
}

async function onMessage(message) {
  switch (message.type) {
    case 'joined': {
      state.joined = true;
      // A recorder already in the room says so right after `joined`.
      setRecording(false);
      state.reconnecting = false;
      state.reconnectDelay = 500;
      state.resume = message.resume || null;
      state.me = message.participant;
      state.myName = message.name;
      state.iceServers = message.ice_servers || [];
      state.simulcast = Boolean(message.simulcast);
      state.svc = message.svc ? (message.svc_codec === 'av1' ? 'video/AV1' : 'video/VP9') : null;
      state.audio = message.audio || { profile: 'speech' };
      clearError();
      showCall();
      setStatus('Connected');
      showAudioProfile();
      renderLocalTile();
      for (const participant of message.participants) addParticipant(participant);
      if (state.micTrack && state.capturedProfile !== state.audio.profile) {
        // The room's profile differs from the one the microphone was opened with.
        await recaptureMic().catch((err) => console.error('microphone capture failed', err));
      }
      fillDevicePickers().catch((err) => console.warn('no device list', err));
      if (message.publish) {
        startPublishing().catch((err) => console.error('publishing failed', err));
      }
      break;
    }
    case 'offer':
      await onSubscriberOffer(message.sdp);
      break;
    case 'participant_joined':
      addParticipant(message.participant);
      appendNotice(`${message.participant.name} joined`);
      break;
    case 'participant_left': {
      const name = state.participants.get(message.participant)?.name;
      removeParticipant(message.participant);
      if (name) appendNotice(`${name} left`);
      break;
    }
    case 'track_published':
      addTrackInfo(message.participant, message.track);
      updateTile(message.participant);
      break;
    case 'track_unpublished': {
      const owner = state.trackOwner.get(message.track);
      state.participants.get(owner)?.tracks.delete(message.track);
      state.trackOwner.delete(message.track);
      updateTile(owner);
      break;
    }
    case 'track_muted': {
      const info = state.participants.get(message.participant)?.tracks.get(message.track);
      if (info) info.muted = message.muted;
      updateTile(message.participant);
      break;
    }
    case 'screen_share': {
      const participant = state.participants.get(message.participant);
      if (participant) participant.screen = message.active;
      updateTile(message.participant);
      break;
    }
    case 'active_speaker':
      setActiveSpeaker(message.participant);
      break;
    case 'recording':
      if (message.active !== state.recording) {
        appendNotice(message.active ? 'This room is now being recorded.' : 'Recording stopped.');
      }
      setRecording(message.active === true);
      break;
    case 'connection_quality':
      showQualities(message.qualities);
      break;
    case 'publish_layers':
      await publishLayers(message).catch((err) => console.warn('layers not switched', err));
      break;
    case 'chat':
      appendMessage(message);
      break;
    case 'error':
      onError(message);
      break;
    case 'reconnect':
      scheduleReconnect(message.reason);
      break;
    case 'left':
      if (!state.leaving) {
        state.joined = false;
        endCall();
        showError('left', `You left the room: ${message.reason}`);
      }
      break;
    default:
      break;
  }
}

// While rejoining after a reconnect, these only mean "not yet": keep trying.
const TRANSIENT = new Set(['shard_unavailable', 'unavailable', 'internal', 'rate_limited']);

function onError({ code, message }) {
  if (!state.joined && state.reconnecting && TRANSIENT.has(code)) {
    setStatus(`Reconnecting… (${ERROR_TEXT[code] || code})`);
    scheduleReconnect(code);
    return;
  }
  if (!state.joined) {
    // The join was refused: back to the form with the reason.
    state.leaving = true;
    if (state.ws) state.ws.close();
    endCall();
    showError(code, message);
    return;
  }
  if (code === 'rate_limited') {
    // What this page asked for may not have been taken: ask again once the budget refills.
    for (const participant of state.participants.values()) {
      for (const info of participant.tracks.values()) info.quality = null;
    }
    setTimeout(scheduleQualityCheck, 1000);
  }
  if (code === 'track_not_found') {
    // A quality asked for a video that ended meanwhile: nothing the user did or can mend.
    console.warn('track_not_found', message);
    return;
  }
  if (state.answerWaiter && (code === 'sdp_rejected' || code === 'forbidden')) {
    state.answerWaiter.reject(new Error(code));
    state.answerWaiter = null;
  }
  showError(code, message);
}

function endCall() {
  clearTimeout(state.reconnectTimer);
  state.reconnecting = false;
  state.resume = null;
  closePeerConnections();
  stopLocalMedia();
  for (const id of [...state.participants.keys()]) removeParticipant(id);
  $('#grid').replaceChildren();
  $('#messages').replaceChildren();
  setRecording(false);
  state.joined = false;
  state.me = null;
  showLobby();
}

function showAudioProfile() {
  const music = state.audio.profile === 'music';
  $('#audio-profile').textContent = music
    ? `Music room: your microphone is sent as it sounds (${Math.round((state.audio.bitrate || 128000) / 1000)} kbit/s, stereo, no echo cancellation). Wear headphones.`
    : '';
  $('#audio-profile').classList.toggle('hidden', !music);
}

async function join(credentials) {
  clearError();
  state.credentials = credentials;
  state.leaving = false;
  $('#join').disabled = true;
  try {
    // Capture for the profile the link asks for (`joined` may say otherwise) while the
    // round trips to each region are measured.
    const [, rtt] = await Promise.all([
      startLocalMedia(credentials.audio === 'music' ? 'music' : 'speech'),
      measureRegions().catch(() => null),
    ]);
    state.rtt = rtt;
  } finally {
    $('#join').disabled = false;
  }
  connect();
}

function leave() {
  state.leaving = true;
  send({ type: 'leave' });
  if (state.ws) state.ws.close();
  endCall();
}

// ---------------------------------------------------------------- test and debug hooks

// What a participant observes, for end-to-end tests and for people debugging a call.
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
      packetsLost: stat.packetsLost || 0,
      framesDecoded: stat.framesDecoded || 0,
      frameWidth: stat.frameWidth || 0,
      frameHeight: stat.frameHeight || 0,
      totalAudioEnergy: stat.totalAudioEnergy || 0,
      audioLevel: stat.audioLevel || 0,
      bytesReceived: stat.bytesReceived || 0,
      jitterBufferDelay: stat.jitterBufferDelay || 0,
      jitterBufferEmittedCount: stat.jitterBufferEmittedCount || 0,
      totalSamplesReceived: stat.totalSamplesReceived || 0,
      concealedSamples: stat.concealedSamples || 0,
    });
  });
  return rows;
}

async function candidatePair(target) {
  const pc = target === 'subscriber' ? state.sub : state.pub;
  if (!pc) return null;
  const report = await pc.getStats();
  let pair = null;
  report.forEach((stat) => {
    if (stat.type === 'candidate-pair' && stat.nominated && stat.state === 'succeeded') pair = stat;
  });
  if (!pair) return null;
  const local = report.get(pair.localCandidateId);
  const remote = report.get(pair.remoteCandidateId);
  return {
    localType: local?.candidateType,
    remoteType: remote?.candidateType,
    // How the browser reaches its TURN server for a relay candidate: udp, tcp or tls.
    relayProtocol: local?.relayProtocol,
    remoteAddress: remote?.address,
    roundTripMs: pair.currentRoundTripTime === undefined ? null : pair.currentRoundTripTime * 1000,
    bytesReceived: pair.bytesReceived,
  };
}

window.tutti = {
  state,
  inboundStats,
  // Whether the page shows that the room is being recorded.
  recordingShown: () => !$('#recording').hidden,
  candidatePair,
  // The round trips this page measured to each region and reported in `join`.
  roundTrips: () => state.rtt,
  // The connection quality each tile shows, by name ('me' for this page's own).
  shownQualities: () => Object.fromEntries([...document.querySelectorAll('.tile')].map((t) => [
    t.classList.contains('local') ? 'me' : t.dataset.name, t.querySelector('.quality')?.dataset.quality ?? null,
  ])),
  // The quality this page asked for each participant's video, by name.
  askedQualities: () => Object.fromEntries([...state.participants.values()].map((p) => [
    p.name, [...p.tracks.values()].filter((t) => t.kind === 'video').map((t) => t.quality)[0] ?? null,
  ])),
  participants: () => [...state.participants].map(([id, p]) => ({ id, name: p.name, screen: p.screen })),
  // What a lost network path triggers: an ICE restart of both connections.
  restartMedia: () => {
    restartIce(state.pub, 'publisher');
    restartIce(state.sub, 'subscriber');
  },
};

// ---------------------------------------------------------------- start

function init() {
  document.addEventListener('visibilitychange', scheduleQualityCheck);
  $('#join-form').addEventListener('submit', (event) => {
    event.preventDefault();
    join({
      room: $('#room').value.trim(),
      name: $('#name').value.trim(),
      password: $('#password').value,
      token: '',
      audio: $('#audio-music').checked ? 'music' : '',
    });
  });
  $('#banner-close').addEventListener('click', clearError);
  $('#toggle-mic').addEventListener('click', toggleMic);
  $('#toggle-cam').addEventListener('click', toggleCam);
  $('#toggle-screen').addEventListener('click', toggleScreen);
  $('#leave').addEventListener('click', leave);
  $('#pick-mic').addEventListener('change', (e) => enqueue(() => chooseMic(e.target.value)));
  $('#pick-cam').addEventListener('change', (e) => enqueue(() => chooseCam(e.target.value)));
  $('#pick-speaker').addEventListener('change', (e) => chooseSpeaker(e.target.value));
  navigator.mediaDevices?.addEventListener?.('devicechange', () => {
    if (state.joined) fillDevicePickers().catch(() => {});
  });
  $('#room-search').addEventListener('input', refreshRooms);
  $('#chat-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = $('#chat-text').value;
    if (!text.trim()) return;
    const to = $('#chat-to').value;
    send(to ? { type: 'chat', text, to } : { type: 'chat', text });
    $('#chat-text').value = '';
  });
  $('#deep-link').textContent = `${location.origin}/?room=ROOM&name=NAME`;

  const link = readDeepLink();
  $('#room').value = link.room;
  $('#name').value = link.name;
  $('#audio-music').checked = link.audio === 'music';
  if (link.room && (link.name || link.token)) {
    join(link);
  } else {
    showLobby();
  }
}

init();
