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

Through a gateway: `--gateway --name NAME [--join-token JWT] [--ice-servers JSON] [--relay]`
joins by nickname (and token), uses the given ICE servers (the shape `/v1/ice-servers`
returns), and with `--relay` sends media only through TURN.
"""

import argparse
import asyncio
import json
import sys

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


def local_candidate_type(pc):
    """The type of the local candidate of the nominated pair, as far as aioice tells."""
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport or transceiver.sender.transport
        if transport is None:
            continue
        connection = transport.transport._connection
        for pair in getattr(connection, "_nominated", {}).values():
            return pair.local_candidate.type
    return None


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
    ws = await connect(args.url, args.token)
    await join(ws, args, True, False)
    pc = RTCPeerConnection(configuration(args))
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
    result = {"frames": 0, "width": 0, "height": 0, "codec": None, "candidate": None}
    done = asyncio.Event()

    @pc.on("track")
    def on_track(track):
        if track.kind != "video":
            return

        async def consume():
            while not done.is_set():
                try:
                    frame = await track.recv()
                except Exception:  # the track ended
                    return
                result["frames"] += 1
                result["width"] = frame.width
                result["height"] = frame.height
                if result["frames"] >= args.frames:
                    done.set()

        asyncio.ensure_future(consume())

    async def signaling():
        async for raw in ws:
            message = json.loads(raw)
            if message.get("type") == "offer":
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
    parser.add_argument("--room", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    asyncio.run(publish(args) if args.mode == "publish" else subscribe(args))


if __name__ == "__main__":
    main()
