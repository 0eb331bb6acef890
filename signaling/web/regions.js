// Round trips to each region, measured before joining, so that a small room can be
// placed where the farthest of its participants hears the others soonest.
//
// The gateway lists one STUN probe per region (GET /v1/regions): a shard's media port,
// which answers plain Binding requests. One throwaway RTCPeerConnection per region (a
// socket each: a browser keeps only one reflexive candidate per socket, however many
// servers answer) sends its probe a request as soon as it has gathered its host
// candidate; the time from that candidate to the reflexive one the answer yields is the
// round trip. Browsers drop a reflexive candidate equal to a host one, so a browser with
// no NAT in front of it measures nothing; a region that does not answer within
// PROBE_TIMEOUT_MS goes unmeasured too. Either way the join goes on: the room is placed
// without what is missing.

const PROBE_TIMEOUT_MS = 2000;
const ROUNDS = 5;

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
  // A few rounds, keeping each region's median: a busy browser errs both ways. It may
  // send late, which adds time, or hand the page its host candidate late, which starts
  // the clock late and takes time away (4.2 and 0.3 ms were seen for a 10 ms path while
  // the test suite ran). Two such rounds among five do not move the median; among three
  // they did once (25.1 ms for a 10 ms path, and a duet's room stayed where it was). The
  // regions are timed together, so a round costs about the largest round trip.
  const samples = {};
  for (let round = 0; round < ROUNDS; round += 1) {
    const measured = await Promise.all(regions.map((r) => roundTrip(r.probe)));
    regions.forEach((r, i) => {
      if (measured[i] !== null) (samples[r.region] ||= []).push(measured[i]);
    });
    if (!Object.keys(samples).length) break;
  }
  const rtt = Object.fromEntries(Object.entries(samples).map(([region, ms]) => [region, median(ms)]));
  return Object.keys(rtt).length ? rtt : null;
}

/** The middle value (the mean of the middle two for an even count), to 0.1 ms. */
function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const value = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return Math.round(value * 10) / 10;
}

/** The round trip (ms, one decimal) to one STUN server, or null. */
async function roundTrip(url) {
  const pc = new RTCPeerConnection({ iceServers: [{ urls: url }] });
  pc.createDataChannel('probe');
  let opened = null;
  let best = null;
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
      if (event.candidate.type === 'srflx' && opened !== null) {
        const ms = Math.round((now - opened) * 10) / 10;
        // One answer per local address: keep the fastest.
        if (best === null || ms < best) best = ms;
      }
    };
    pc.setLocalDescription().catch(() => resolve());
  });
  pc.close();
  return best;
}

