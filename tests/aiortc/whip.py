"""A WHIP publisher (RFC 9725) and a WHEP viewer on aiortc, written from the RFC, the WHEP
draft and docs/whip-whep.md alone.

    python whip.py publish --url http://HOST/v1/whip/BROADCAST --token JWT
                           [--audio] [--no-video] [--width W --height H]
                           [--trickle]

It POSTs its offer (`application/sdp`, `Authorization: Bearer`), applies the answer and
prints one JSON line: {"event": "created", "status", "location", "etag", "links",
"accept_patch"} (or {"event": "refused", "status", "body"} and exits 1). With `--trickle`
it also PATCHes its own candidates as an `application/trickle-ice-sdpfrag` with
`If-Match: <etag>` and prints {"event": "trickled", "status"}. It then sends a test
pattern (and a 440 Hz tone with `--audio`) until killed or its stdin ends; a line `delete`
on stdin makes it DELETE the session, print {"event": "deleted", "status"} and exit.

    python whip.py play --url http://HOST/v1/whep/BROADCAST[?quality=low] [--token JWT]
                        [--events]

`play` POSTs a recvonly audio and video offer, prints {"event": "created", ...} as
`publish` does, and decodes what arrives. Each line `report` on stdin prints {"event":
"report", "frames", "width", "height", "audio_frames", "state", "video_ssrcs", "audio_ssrcs",
"video_packets", "video_missing"}: video frames decoded so far, the size of the last, audio
frames decoded, the connection's state, how many SSRCs video and audio came on, and of the
video stream the packets and the sequence numbers missing between its first and its last. `delete` DELETEs
the session and exits, as for `publish`.

With `--events` the player uses the WHEP server-sent events extension: it finds the
`Link` of rel `urn:ietf:params:whep:ext:core:server-sent-events` in the 201, POSTs the
events it wants there, and reads the event stream it is given. A `reconnect` event makes
it do what the draft says: close its connection, DELETE its session and POST to the
endpoint again (after `Retry-After` while that answers 503); with `--keep-old` it skips
the DELETE. Reports then also carry
"events" (the event names received, in order), "sessions" (how many sessions it opened)
"location" (its current session) and "session_frames" (video frames it decoded in it).

aiortc gathers every candidate before its offer is made, so the offer carries them; the
PATCH is what a trickling client would send for them. Host candidates are 127.0.0.1 only.
"""

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

import aioice.ice
from aiortc import RTCPeerConnection, RTCSessionDescription

# Loopback only: no test datagram leaves through another interface of the host.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []

sys.path.insert(0, __import__("os").path.dirname(__file__))
from peer import AUDIO_ARRIVALS, VIDEO_ARRIVALS, PatternTrack, ToneTrack, video_summary  # noqa: E402


def http(method, url, body=None, headers=None):
    """One request; (status, headers as a list of pairs, body text). Never raises on 4xx."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.getheaders(), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, list(err.headers.items()), err.read().decode()


def header(headers, name):
    return [v for k, v in headers if k.lower() == name.lower()]


def fragment(sdp):
    """The trickle fragment of a description's ICE credentials and first section's
    candidates (RFC 8840 §9)."""
    lines = sdp.splitlines()
    ufrag = next(line for line in lines if line.startswith("a=ice-ufrag:"))
    pwd = next(line for line in lines if line.startswith("a=ice-pwd:"))
    out = [ufrag, pwd]
    section = []
    for line in lines:
        if line.startswith("m="):
            if section:
                break
            section.append(line)
        elif section and (line.startswith("a=mid:") or line.startswith("a=candidate:")):
            section.append(line)
    out += section
    out.append("a=end-of-candidates")
    return "\r\n".join(out) + "\r\n"


# What a viewer decoded so far.
SEEN = {"frames": 0, "width": 0, "height": 0, "audio_frames": 0, "session_frames": 0}


def watch(pc):
    """Decodes every track that arrives, counting into SEEN."""

    @pc.on("track")
    def on_track(track):
        async def consume():
            while True:
                try:
                    frame = await track.recv()
                except Exception:  # the track ended
                    return
                if track.kind == "video":
                    SEEN["frames"] += 1
                    SEEN["session_frames"] += 1
                    SEEN["width"], SEEN["height"] = frame.width, frame.height
                else:
                    SEEN["audio_frames"] += 1

        asyncio.ensure_future(consume())


SSE_REL = "urn:ietf:params:whep:ext:core:server-sent-events"

# What the player's current session is, and what its event streams brought.
SESSION = {"pc": None, "location": None, "sessions": 0, "events": []}


def new_connection(args):
    pc = RTCPeerConnection()
    if args.mode == "play":
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        watch(pc)
    else:
        if args.audio:
            pc.addTransceiver(ToneTrack(), direction="sendonly")
        if not args.no_video:
            pc.addTransceiver(PatternTrack(args.width, args.height), direction="sendonly")
    return pc


async def post_offer(args, pc):
    """POSTs the connection's offer; (status, headers, body)."""
    offer = await pc.createOffer()
    await pc.setLocalDescription(offer)
    headers = {"Content-Type": "application/sdp"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    return await asyncio.to_thread(
        http, "POST", args.url, pc.localDescription.sdp.encode(), headers
    )


def link_of(headers, rel):
    """The target of the first Link header value with relation `rel`."""
    for value in header(headers, "Link"):
        for link in value.split(","):
            target, _, params = link.strip().partition(">")
            if f'rel="{rel}"' in params or f"rel={rel}" in params:
                return target.lstrip("<")
    return None


def read_events(url, loop, queue):
    """Reads a text/event-stream until it ends, handing each (event, data) to `queue`."""
    request = urllib.request.Request(url, headers={"Accept": "text/event-stream"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            kind, data = None, []
            for raw in response:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line:
                    if kind:
                        loop.call_soon_threadsafe(queue.put_nowait, (kind, "\n".join(data)))
                    kind, data = None, []
    except Exception:  # the stream ended with its session
        return


async def follow_events(args, response_headers, queue):
    """Opens an event stream on the session the 201 described, if it offers one."""
    link = link_of(response_headers, SSE_REL)
    if not link:
        return
    url = urllib.parse.urljoin(SESSION["location"], link)
    body = json.dumps(["active", "inactive", "reconnect"]).encode()
    status, headers, _ = await asyncio.to_thread(
        http, "POST", url, body, {"Content-Type": "application/json"}
    )
    if status != 201:
        SESSION["events"].append(f"refused:{status}")
        return
    stream = urllib.parse.urljoin(url, header(headers, "Location")[0])
    asyncio.get_running_loop().run_in_executor(
        None, read_events, stream, asyncio.get_running_loop(), queue
    )


async def reconnect(args, queue):
    """What a reconnect event asks: end this session, POST again until seated."""
    old = SESSION["pc"]
    await old.close()
    SEEN["session_frames"] = 0
    if not args.keep_old:
        await asyncio.to_thread(http, "DELETE", SESSION["location"], None, {})
    for _ in range(60):
        pc = new_connection(args)
        status, headers, body = await post_offer(args, pc)
        if status == 201:
            SESSION["pc"] = pc
            SESSION["location"] = urllib.parse.urljoin(args.url, header(headers, "Location")[0])
            SESSION["sessions"] += 1
            await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
            await follow_events(args, headers, queue)
            return
        await pc.close()
        if status != 503:
            SESSION["events"].append(f"refused:{status}")
            return
        # The endpoint says when to come back.
        await asyncio.sleep(float((header(headers, "Retry-After") or ["1"])[0]))


async def handle_events(args, queue):
    while True:
        kind, _ = await queue.get()
        SESSION["events"].append(kind)
        if kind == "reconnect":
            await reconnect(args, queue)


async def publish(args):
    pc = new_connection(args)
    status, response_headers, body = await post_offer(args, pc)
    if status != 201:
        print(json.dumps({"event": "refused", "status": status, "body": body}), flush=True)
        await pc.close()
        sys.exit(1)
    location = urllib.parse.urljoin(args.url, header(response_headers, "Location")[0])
    SESSION.update(pc=pc, location=location, sessions=1)
    etag = (header(response_headers, "ETag") or [None])[0]
    print(
        json.dumps(
            {
                "event": "created",
                "status": status,
                "location": location,
                "etag": etag,
                "links": header(response_headers, "Link"),
                "accept_patch": header(response_headers, "Accept-Patch"),
                "content_type": header(response_headers, "Content-Type"),
            }
        ),
        flush=True,
    )
    await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    if args.events:
        queue = asyncio.Queue()
        await follow_events(args, response_headers, queue)
        asyncio.ensure_future(handle_events(args, queue))
    if args.trickle:
        patch_headers = {"Content-Type": "application/trickle-ice-sdpfrag"}
        if etag:
            patch_headers["If-Match"] = etag
        status, _, _ = await asyncio.to_thread(
            http, "PATCH", location, fragment(pc.localDescription.sdp).encode(), patch_headers
        )
        print(json.dumps({"event": "trickled", "status": status}), flush=True)
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            break
        if line.strip() == "report":
            streams = {
                "video_ssrcs": len({a[0] for a in VIDEO_ARRIVALS}),
                "audio_ssrcs": len({a[0] for a in AUDIO_ARRIVALS}),
            }
            session = {
                "state": SESSION["pc"].connectionState,
                "events": SESSION["events"],
                "sessions": SESSION["sessions"],
                "location": SESSION["location"],
            }
            print(
                json.dumps({"event": "report", **session, **SEEN, **streams, **video_summary()}),
                flush=True,
            )
        elif line.strip() == "delete":
            status, _, _ = await asyncio.to_thread(
                http, "DELETE", SESSION["location"], None, {}
            )
            print(json.dumps({"event": "deleted", "status": status}), flush=True)
            break
    await SESSION["pc"].close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["publish", "play"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--audio", action="store_true")
    parser.add_argument("--no-video", action="store_true")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--trickle", action="store_true")
    parser.add_argument("--events", action="store_true")
    # A player that does not DELETE its old session on `reconnect`: shows whether the
    # server ended it itself.
    parser.add_argument("--keep-old", action="store_true")
    args = parser.parse_args()
    asyncio.run(publish(args))


if __name__ == "__main__":
    main()
