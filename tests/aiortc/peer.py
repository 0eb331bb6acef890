"""An aiortc peer speaking the Tutti shard's signaling protocol, or (with --gateway) the
gateway's client protocol.

aiortc is a WebRTC stack nobody on this project wrote; the shard is proven interoperable
when an aiortc publisher's video, forwarded by the shard, is decoded by an aiortc
subscriber at the resolution it was sent.

    python peer.py publish   --url WS --token T --room R --id ID [--width W --height H]
    python peer.py subscribe --url WS --token T --room R --id ID [--frames N]

`subscribe` prints one JSON line {"frames": n, "width": w, "height": h, "codec": ...,
"candidate": type} and exits once it decoded N frames (or on timeout, with what it has);
`candidate` is the type of the local ICE candidate its media flowed through. `publish` runs
until killed.

`publish --uplink-loss P` drops that share of its RTP at random after its sender kept it
for retransmission, as a lossy uplink would. Every result has {"video_packets",
"video_missing"}: of the video stream that brought the most packets, those received and
the sequence numbers missing between its first and the last that came half a second
before the end.

Audio: `publish --audio` also sends a 440 Hz tone (`--no-video` sends only that);
`subscribe --audio-seconds S` records the RTP sequence numbers of the audio it receives for
S seconds after the first audio packet and adds {"audio_packets", "audio_missing",
"audio_longest_silence_ms"} to its result (and waits for that instead of video frames when
`--frames 0`), with "audio_frames" decoded. `subscribe --pause-for S`, after its N frames, turns
the video off (`set_quality` `off`) for S seconds and on again, and adds {"frames_while_off",
"frames_after_resume", "resumed_after_ms"}. The last `connection_quality` heard is in "qualities". The result also says whether the shard's first offer carried
`a=msid-semantic` and which stream ids the tracks arrived with.

aiortc's ICE agent is strict as RFC 8445 §7.2.5.2.1 asks: a check succeeds only when its
response comes from the address the check was sent to. Its consent freshness is its own
default (a check every 4-6 s, failure after 30 s without answers). Host candidates are
127.0.0.1 only, so every test datagram stays on the loopback interface.

Through a gateway: `--gateway --name NAME [--join-token JWT] [--ice-servers JSON] [--relay]`
joins by nickname (and token), uses the given ICE servers (the shape `/v1/ice-servers`
returns), and with `--relay` sends media only through TURN. `--gateway --watch` watches the
broadcast `--room` as a viewer (seated on an edge).
"""

import argparse
import asyncio
import fractions
import json
import logging
import math
import os
import random
import sys
import time

import aioice.ice
import av
import websockets
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import is_rtcp

# Loopback only: no test datagram leaves through another interface of the host.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []

# Audio RTP arrivals, (ssrc, sequence number, arrival time): recorded below the decoder,
# so a gap is a packet the shard never sent, not a decoding hiccup. Video arrivals, (ssrc,
# sequence number), likewise.
AUDIO_ARRIVALS = []
AUDIO_PAYLOAD_TYPES = set()
VIDEO_ARRIVALS = []
_handle_rtp = RTCRtpReceiver._handle_rtp_packet


async def _record_rtp(self, packet, arrival_time_ms):
    if self._RTCRtpReceiver__kind == "audio":
        AUDIO_ARRIVALS.append((packet.ssrc, packet.sequence_number, time.monotonic()))
        AUDIO_PAYLOAD_TYPES.add(packet.payload_type)
    elif packet.payload:
        VIDEO_ARRIVALS.append((packet.ssrc, packet.sequence_number, time.monotonic()))
    return await _handle_rtp(self, packet, arrival_time_ms)


RTCRtpReceiver._handle_rtp_packet = _record_rtp

# Every address a datagram came from (STUN, DTLS, SRTP alike). aioice turns a response
# from an unexpected address into a peer-reflexive candidate and carries on, which would
# hide a server answering from the wrong address; the sources show it.
SOURCES = set()
_datagram_received = aioice.ice.StunProtocol.datagram_received


def _record_source(self, data, addr):
    SOURCES.add(f"{addr[0]}:{addr[1]}")
    return _datagram_received(self, data, addr)


aioice.ice.StunProtocol.datagram_received = _record_source


class ToneTrack(AudioStreamTrack):
    """A 440 Hz sine tone, 20 ms frames of 48 kHz mono."""

    def __init__(self):
        super().__init__()
        self.samples = 0

    async def recv(self):
        frame = await super().recv()  # paced silence of the right shape
        count = frame.samples
        values = [
            int(8000 * math.sin(2 * math.pi * 440 * (self.samples + i) / 48000))
            for i in range(count)
        ]
        data = b"".join(v.to_bytes(2, "little", signed=True) for v in values)
        frame.planes[0].update(data)
        self.samples += count
        return frame


def unwrapped(seqs):
    """Sequence numbers in arrival order, unwrapped past 65535 either way."""
    out = []
    last = seqs[0]
    offset = 0
    for seq in seqs:
        if seq < last and last - seq > 32768:
            offset += 65536
        elif seq > last and seq - last > 32768:
            offset -= 65536
        last = seq
        out.append(seq + offset)
    return out


def video_summary():
    """The video stream that brought most packets (a resend on an RTX stream of its own
    is left out): packets, and sequence numbers missing between its first and the last
    that arrived half a second before the end (a gap after that may be under repair)."""
    if not VIDEO_ARRIVALS:
        return {"video_packets": 0, "video_missing": None}
    ssrc = max({a[0] for a in VIDEO_ARRIVALS}, key=lambda s: sum(a[0] == s for a in VIDEO_ARRIVALS))
    stream = [(seq, t) for s, seq, t in VIDEO_ARRIVALS if s == ssrc]
    indexes = unwrapped([seq for seq, _ in stream])
    settled = time.monotonic() - 0.5
    bound = max((i for i, (_, t) in zip(indexes, stream) if t <= settled), default=None)
    if bound is None:
        return {"video_packets": len(set(indexes)), "video_missing": None}
    seen = {i for i in indexes if i <= bound}
    return {"video_packets": len(set(indexes)), "video_missing": bound - min(seen) + 1 - len(seen)}


def lose_uplink(share):
    """Drops `share` of the RTP this peer sends, at random (seeded), after its sender has
    kept each packet for retransmission: a lossy uplink the far end must repair."""
    rng = random.Random(7)
    send = RTCDtlsTransport._send_rtp

    async def lossy(self, data):
        if not is_rtcp(data) and rng.random() < share:
            return
        await send(self, data)

    RTCDtlsTransport._send_rtp = lossy


def audio_summary(seconds):
    """Per audio stream over the measured window, summed: packets, missing sequence
    numbers, and the longest silence of any stream."""
    if not AUDIO_ARRIVALS:
        return {"audio_packets": 0, "audio_missing": None, "audio_longest_silence_ms": None}
    start = AUDIO_ARRIVALS[0][2]
    window = [a for a in AUDIO_ARRIVALS if a[2] - start <= seconds]
    packets = missing = 0
    longest = 0.0
    for ssrc in {a[0] for a in window}:
        stream = [(seq, t) for s, seq, t in window if s == ssrc]
        seen = set(unwrapped([seq for seq, _ in stream]))
        packets += len(seen)
        missing += max(seen) - min(seen) + 1 - len(seen)
        times = [t for _, t in stream]
        longest = max([longest] + [b - a for a, b in zip(times, times[1:])])
    return {
        "audio_packets": packets,
        "audio_missing": missing,
        "audio_longest_silence_ms": round(longest * 1000, 1),
        "audio_window_s": round(window[-1][2] - start, 1),
        "audio_streams": len({a[0] for a in window}),
        "audio_payload_types": sorted(AUDIO_PAYLOAD_TYPES),
    }


class PatternTrack(VideoStreamTrack):
    """A moving gradient at a fixed resolution."""

    def __init__(self, width, height):
        super().__init__()
        self.width = width
        self.height = height
        self.count = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(width=self.width, height=self.height, format="yuv420p")
        shade = (self.count * 3) % 256
        for index, plane in enumerate(frame.planes):
            value = shade if index == 0 else 128
            plane.update(bytes([value]) * plane.buffer_size)
        self.count += 1
        frame.pts = pts
        frame.time_base = time_base
        return frame


def configuration(args):
    servers = [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in json.loads(args.ice_servers or "[]")
    ]
    policy = RTCIceTransportPolicy.RELAY if args.relay else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=servers or None, iceTransportPolicy=policy)


def nominated_pair(pc):
    """The nominated candidate pair, as far as aioice tells."""
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport or transceiver.sender.transport
        if transport is None:
            continue
        connection = transport.transport._connection
        for pair in getattr(connection, "_nominated", {}).values():
            return pair
    return None


def local_candidate_type(pc):
    """The type of the local candidate of the nominated pair."""
    pair = nominated_pair(pc)
    return pair.local_candidate.type if pair else None


async def connect(url, token):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return await websockets.connect(url, additional_headers=headers, max_size=2**20)
    except TypeError:  # websockets < 14
        return await websockets.connect(url, extra_headers=headers, max_size=2**20)


async def send(ws, message):
    message["v"] = 1
    await ws.send(json.dumps(message))


async def join(ws, args, publish, subscribe):
    message = {"type": "join", "room": args.room, "publish": publish, "subscribe": subscribe}
    if args.gateway:
        message["name"] = args.name or args.id
        if args.watch:
            message["watch"] = True
        if args.join_token:
            message["token"] = args.join_token
    else:
        message["participant"] = args.id
        message["name"] = args.id
    await send(ws, message)
    reply = json.loads(await ws.recv())
    if reply.get("type") != "joined":
        raise SystemExit(f"join refused: {reply}")


async def publish(args):
    if args.uplink_loss > 0:
        lose_uplink(args.uplink_loss)
    ws = await connect(args.url, args.token)
    await join(ws, args, True, False)
    pc = RTCPeerConnection(configuration(args))
    if args.audio:
        pc.addTransceiver(ToneTrack(), direction="sendonly")
    if not args.no_video:
        pc.addTransceiver(PatternTrack(args.width, args.height), direction="sendonly")
    offer = await pc.createOffer()
    await pc.setLocalDescription(offer)
    await send(ws, {"type": "offer", "pc": "publisher", "sdp": pc.localDescription.sdp})
    async for raw in ws:
        message = json.loads(raw)
        if message.get("type") == "answer":
            await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "answer"))
            print("publishing", file=sys.stderr, flush=True)
        elif message.get("type") == "error":
            print(f"shard error: {message}", file=sys.stderr, flush=True)
    await pc.close()


async def subscribe(args):
    ws = await connect(args.url, args.token)
    await join(ws, args, False, True)
    pc = RTCPeerConnection(configuration(args))
    result = {
        "frames": 0,
        "width": 0,
        "height": 0,
        "codec": None,
        "candidate": None,
        "first_offer_msid_semantic": None,
        "track_ids": [],
        "msid_track_ids": [],
        "shard_candidates": [],
        "audio_frames": 0,
        "audio_channels": 0,
    }
    done = asyncio.Event()
    video_done = asyncio.Event()
    # With --pause-for: the first --frames frames, then the video turned off and on.
    first_frames = asyncio.Event()
    # Set on every decoded video frame; waits clear it and wait for the next.
    frame_arrived = asyncio.Event()
    video_tracks = []  # the shard's ids of the video tracks announced
    if args.frames == 0:
        video_done.set()

    @pc.on("track")
    def on_track(track):
        # aiortc names a remote track by its `a=msid` only under `a=msid-semantic: WMS`;
        # otherwise the id is a random one of its own.
        result["track_ids"].append(track.id)
        if track.kind == "audio":

            async def drain_audio():
                while not done.is_set():
                    try:
                        frame = await track.recv()
                    except Exception:
                        return
                    result["audio_frames"] += 1
                    result["audio_channels"] = len(frame.layout.channels)

            asyncio.ensure_future(drain_audio())
            return

        async def consume():
            while not done.is_set():
                try:
                    frame = await track.recv()
                except Exception:  # the track ended
                    return
                result["frames"] += 1
                frame_arrived.set()
                result["width"] = frame.width
                result["height"] = frame.height
                if result["frames"] >= args.frames:
                    first_frames.set()
                    if args.pause_for <= 0:
                        video_done.set()

        asyncio.ensure_future(consume())

    async def audio_window():
        if args.audio_seconds <= 0:
            return
        while not AUDIO_ARRIVALS:  # the window starts with the first audio packet
            await asyncio.sleep(0.05)
        await asyncio.sleep(args.audio_seconds + 0.5)

    async def finished():
        await asyncio.gather(video_done.wait(), audio_window())
        done.set()

    asyncio.ensure_future(finished())

    async def frames_settle(quiet, timeout):
        # Until no video frame has arrived for `quiet` seconds, or `timeout` has passed.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            frame_arrived.clear()
            try:
                await asyncio.wait_for(frame_arrived.wait(), min(quiet, deadline - loop.time()))
            except asyncio.TimeoutError:
                return

    async def frames_reach(count, timeout):
        # Until `count` video frames have arrived in all, or `timeout` has passed.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while result["frames"] < count and loop.time() < deadline:
            frame_arrived.clear()
            try:
                await asyncio.wait_for(frame_arrived.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                return

    async def pause_and_resume():
        # docs/protocol.md: `set_quality` with `off` sends none of that video until a
        # quality is asked for again, and then it resumes on a keyframe.
        if args.pause_for <= 0:
            return
        await first_frames.wait()
        for track in video_tracks:
            await send(ws, {"type": "set_quality", "track": track, "quality": "off"})
        # What was already on its way may still arrive: the window starts once no frame
        # has come for 0.3 s (at most 5 s after asking; one still arriving then is counted).
        await frames_settle(quiet=0.3, timeout=5.0)
        before = result["frames"]
        # The window itself: a fixed span over which nothing may arrive.
        await asyncio.sleep(args.pause_for)
        result["frames_while_off"] = result["frames"] - before
        for track in video_tracks:
            await send(ws, {"type": "set_quality", "track": track, "quality": "high"})
        asked = asyncio.get_running_loop().time()
        resumed_from = result["frames"]
        await frames_reach(resumed_from + 15, timeout=20.0)
        result["frames_after_resume"] = result["frames"] - resumed_from
        result["resumed_after_ms"] = round((asyncio.get_running_loop().time() - asked) * 1000)
        video_done.set()

    asyncio.ensure_future(pause_and_resume())

    async def signaling():
        async for raw in ws:
            message = json.loads(raw)
            if message.get("type") == "joined":
                for participant in message.get("participants", []):
                    for track in participant.get("tracks", []):
                        if track.get("kind") == "video":
                            video_tracks.append(track["id"])
            elif message.get("type") == "track_published":
                if message["track"].get("kind") == "video":
                    video_tracks.append(message["track"]["id"])
            elif message.get("type") == "connection_quality":
                result["qualities"] = {q["participant"]: q["quality"] for q in message["qualities"]}
            if message.get("type") == "offer":
                if result["first_offer_msid_semantic"] is None:
                    result["first_offer_msid_semantic"] = "a=msid-semantic:" in message["sdp"]
                for line in message["sdp"].splitlines():
                    if line.startswith("a=candidate:") and line[2:] not in result["shard_candidates"]:
                        result["shard_candidates"].append(line[2:])
                    bits = line[len("a=msid:"):].split() if line.startswith("a=msid:") else []
                    if len(bits) == 2 and bits[1] not in result["msid_track_ids"]:
                        result["msid_track_ids"].append(bits[1])
                await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "offer"))
                answer = await pc.createAnswer()
                await pc.setLocalDescription(answer)
                for transceiver in pc.getTransceivers():
                    codecs = getattr(transceiver, "_codecs", None)
                    if transceiver.kind == "video" and codecs:
                        result["codec"] = codecs[0].mimeType
                await send(
                    ws, {"type": "answer", "pc": "subscriber", "sdp": pc.localDescription.sdp}
                )

    task = asyncio.ensure_future(signaling())
    try:
        await asyncio.wait_for(done.wait(), timeout=args.timeout)
    except asyncio.TimeoutError:
        pass
    result["candidate"] = local_candidate_type(pc)
    pair = nominated_pair(pc)
    result["selected_remote"] = f"{pair.remote_addr[0]}:{pair.remote_addr[1]}" if pair else None
    result["sources"] = sorted(SOURCES)
    # Which SSRCs each audio receiver got packets from (one each, when routing works).
    result["audio_receivers"] = [
        {"mid": t.mid, "ssrcs": sorted(getattr(t.receiver, "_RTCRtpReceiver__active_ssrc", {}))}
        for t in pc.getTransceivers()
        if t.kind == "audio"
    ]
    if args.audio_seconds > 0:
        result.update(audio_summary(args.audio_seconds))
    result.update(video_summary())
    print(json.dumps(result), flush=True)
    task.cancel()
    await pc.close()
    await ws.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["publish", "subscribe"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--gateway", action="store_true")
    parser.add_argument("--name")
    parser.add_argument("--join-token")
    parser.add_argument("--ice-servers")
    parser.add_argument("--relay", action="store_true")
    parser.add_argument("--watch", action="store_true")
    parser.add_argument("--room", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--pause-for", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--audio", action="store_true")
    parser.add_argument("--no-video", action="store_true")
    parser.add_argument("--audio-seconds", type=float, default=0.0)
    parser.add_argument("--uplink-loss", type=float, default=0.0)
    args = parser.parse_args()
    if os.environ.get("TUTTI_AIORTC_LOG"):
        # aioice's account of every check, on stderr (TUTTI_AIORTC_LOG=1).
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(publish(args) if args.mode == "publish" else subscribe(args))


if __name__ == "__main__":
    main()
