// Round trips to each region, measured before joining, so that a small room can be
// placed where the farthest of its participants hears the others soonest.
//
// The gateway lists one STUN probe per region (GET /v1/regions): a shard's media port,
// which answers plain Binding requests. A throwaway RTCPeerConnection sends each probe a
// request when it gathers candidates; the time from its first host candidate (its socket
// is open, the requests leave) to the reflexive candidate each probe's answer yields is
// the round trip to that region. Browsers drop a reflexive candidate equal to a host one,
// so a browser with no NAT in front of it measures nothing; a region that does not
// answer within PROBE_TIMEOUT_MS goes unmeasured too. Either way the join goes on: the
// gateway places the room without what is missing.

const PROBE_TIMEOUT_MS = 2000;

/** `{region: ms}` for the regions that answered, or null when there is nothing to choose. */
export async function measureRegions() {
  let regions;
  try {
    const response = await fetch('/v1/regions');
    if (!response.ok) return null;
    regions = (await response.json()).regions || [];
  } catch {
    return null;
  }
  if (regions.length < 2) return null;
  const regionOf = new Map(regions.map((r) => [r.probe, r.region]));
  const pc = new RTCPeerConnection({ iceServers: [{ urls: regions.map((r) => r.probe) }] });
  pc.createDataChannel('probe');
  const rtt = {};
  let opened = null;
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, PROBE_TIMEOUT_MS);
    pc.onicecandidate = (event) => {
      const now = performance.now();
      if (!event.candidate) {
        clearTimeout(timer);
        resolve();
        return;
      }
      if (event.candidate.type === 'host' && opened === null) opened = now;
      if (event.candidate.type !== 'srflx') return;
      const region = regionOf.get(event.url);
      if (!region || opened === null) return;
      const ms = Math.round((now - opened) * 10) / 10;
      // One answer per local address: keep the fastest.
      if (!(region in rtt) || ms < rtt[region]) rtt[region] = ms;
    };
    pc.setLocalDescription().catch(() => resolve());
  });
  pc.close();
  return Object.keys(rtt).length ? rtt : null;
}
