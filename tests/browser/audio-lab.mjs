// Measuring audio latency between pages: WebAudio clicks rendered into a sent track and
// detected in a received one, timed on the wall clock (pages of one machine share it,
// whichever browser process they are in), and the helpers that pair and summarise them.

/** Page-side tools: a direct call, WebAudio clicks and their detection. */
export function installLab(p) {
  return p.evaluate(() => {
    const worklet = async (ctx, code) => {
      const url = URL.createObjectURL(new Blob([code], { type: 'application/javascript' }));
      await ctx.audioWorklet.addModule(url);
    };
    // The Opus tuning the shard writes for a music room, for the direct call to match.
    const tune = (sdp, music) => {
      if (!music) return sdp;
      const pts = [...sdp.matchAll(/^a=rtpmap:(\d+) opus\/48000/gim)].map((m) => m[1]);
      let out = sdp;
      for (const pt of pts) {
        out = out.replace(new RegExp(`^a=fmtp:${pt} (.*?)(\\r?)$`, 'm'), (_, params, cr) =>
          `a=fmtp:${pt} ${params.split(';').filter((x) => !/^(stereo|sprop-stereo|maxaveragebitrate|usedtx|useinbandfec)=/.test(x)).join(';')};stereo=1;sprop-stereo=1;maxaveragebitrate=128000;usedtx=0;useinbandfec=1${cr}`);
      }
      return out;
    };
    const gathered = (pc) => new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') resolve();
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') resolve();
      });
    });
    window.lab = {
      // Sender of a direct call: camera and microphone as the room's profile captures them.
      async directOffer(music) {
        const audio = music
          ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: { ideal: 2 } }
          : true;
        const stream = await navigator.mediaDevices.getUserMedia({ audio, video: { width: 640, height: 480 } });
        const pc = new RTCPeerConnection();
        const [mic] = stream.getAudioTracks();
        const [cam] = stream.getVideoTracks();
        // As through the shard: a music room's sound in a stream of its own.
        const audioStream = music ? new MediaStream([mic]) : stream;
        window.lab.audioSender = pc.addTransceiver(mic, {
          direction: 'sendonly',
          streams: [audioStream],
          sendEncodings: [music ? { maxBitrate: 128000, priority: 'high', networkPriority: 'high' } : {}],
        }).sender;
        pc.addTransceiver(cam, { direction: 'sendonly', streams: [stream] });
        window.lab.pc = pc;
        window.lab.music = music;
        await pc.setLocalDescription(await pc.createOffer());
        await gathered(pc);
        return pc.localDescription.sdp;
      },
      async directAnswer(offer, music) {
        const pc = new RTCPeerConnection();
        window.lab.pc = pc;
        window.lab.remote = new MediaStream();
        pc.addEventListener('track', ({ track, receiver }) => {
          window.lab.remote.addTrack(track);
          if (track.kind === 'audio') {
            window.lab.audioReceiver = receiver;
            if (music && 'jitterBufferTarget' in receiver) receiver.jitterBufferTarget = 0;
          }
        });
        await pc.setRemoteDescription({ type: 'offer', sdp: offer });
        const answer = await pc.createAnswer();
        answer.sdp = tune(answer.sdp, music);
        await pc.setLocalDescription(answer);
        await gathered(pc);
        // Play it, as a call page does (and as Chromium needs before WebAudio hears it).
        const element = document.createElement('video');
        element.muted = true;
        element.autoplay = true;
        element.srcObject = window.lab.remote;
        document.body.append(element);
        return pc.localDescription.sdp;
      },
      async directComplete(answer) {
        await window.lab.pc.setRemoteDescription({ type: 'answer', sdp: answer });
      },
      // The receiver's audio jitter buffer, cumulative, with every inbound audio stream's
      // counters (for a message when the buffer emitted nothing).
      async jitter(pc) {
        const report = await (pc || window.lab.pc).getStats();
        let row = null;
        const streams = [];
        report.forEach((s) => {
          if (s.type === 'inbound-rtp' && s.kind === 'audio') {
            row = s;
            streams.push({
              ssrc: s.ssrc, emitted: s.jitterBufferEmittedCount, packets: s.packetsReceived,
              lost: s.packetsLost, concealed: s.concealedSamples,
            });
          }
        });
        return row && {
          delay: row.jitterBufferDelay, emitted: row.jitterBufferEmittedCount, packets: row.packetsReceived,
          streams, at: Date.now(),
        };
      },
      // Replaces the sent sound with a 5 ms 1 kHz click every 600 ms (WebAudio), noting
      // the wall-clock time each click is rendered into the track.
      async startClicks(sender) {
        const ctx = new AudioContext({ latencyHint: 'interactive' });
        await worklet(ctx, `class Clicker extends AudioWorkletProcessor {
          constructor() { super(); this.n = 0; this.period = Math.round(sampleRate * 0.6); }
          process(inputs, outputs) {
            const out = outputs[0];
            for (let s = 0; s < out[0].length; s += 1) {
              const k = this.n % this.period;
              const v = k < sampleRate / 200 ? 0.8 * Math.sin(2 * Math.PI * 1000 * k / sampleRate) : 0;
              for (const channel of out) channel[s] = v;
              if (k === 0) this.port.postMessage(0);
              this.n += 1;
            }
            return true;
          }
        }
        registerProcessor('clicker', Clicker);`);
        const node = new AudioWorkletNode(ctx, 'clicker', { outputChannelCount: [2] });
        const destination = ctx.createMediaStreamDestination();
        node.connect(destination);
        window.lab.clicks = [];
        node.port.onmessage = () => window.lab.clicks.push(performance.timeOrigin + performance.now());
        window.lab.clickContext = ctx;
        await (sender || window.lab.audioSender).replaceTrack(destination.stream.getAudioTracks()[0]);
      },
      stopClicks() {
        window.lab.clickContext?.close();
        return window.lab.clicks;
      },
      // Notes the wall-clock time each click is heard in `stream`'s audio.
      async detectClicks(stream) {
        const ctx = new AudioContext({ latencyHint: 'interactive' });
        await worklet(ctx, `class Detector extends AudioWorkletProcessor {
          constructor() { super(); this.quiet = 0; this.peak = 0; this.blocks = 0; }
          process(inputs) {
            const channel = inputs[0] && inputs[0][0];
            this.blocks += 1;
            if (this.blocks % 375 === 0) this.port.postMessage({ peak: this.peak, blocks: this.blocks });
            if (!channel) return true;
            for (let s = 0; s < channel.length; s += 1) {
              const v = Math.abs(channel[s]);
              if (v > this.peak) this.peak = v;
              // A click: the first loud sample after 300 ms without one.
              if (v > 0.2) {
                if (this.quiet > sampleRate * 0.3) this.port.postMessage(0);
                this.quiet = 0;
              } else {
                this.quiet += 1;
              }
            }
            return true;
          }
        }
        registerProcessor('detector', Detector);`);
        const source = ctx.createMediaStreamSource(new MediaStream((stream || window.lab.remote).getAudioTracks()));
        const node = new AudioWorkletNode(ctx, 'detector');
        source.connect(node);
        node.connect(ctx.destination);
        window.lab.heard = [];
        window.lab.level = null;
        node.port.onmessage = ({ data }) => {
          if (data && typeof data === 'object') window.lab.level = data;
          else window.lab.heard.push(performance.timeOrigin + performance.now());
        };
        window.lab.detectContext = ctx;
      },
      stopDetecting() {
        window.lab.detectContext?.close();
        return window.lab.heard;
      },
    };
  });
}

/** Click-to-ear latencies (ms) from `clicks` to what was `heard`. */
export function pairClicks(clicks, heard) {
  const out = [];
  for (const h of heard) {
    const sent = clicks.filter((c) => c <= h && h - c < 500).pop();
    if (sent !== undefined) out.push(h - sent);
  }
  return out;
}

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
};
export const fmt = (x) => (Number.isFinite(x) ? x.toFixed(1) : 'n/a');
