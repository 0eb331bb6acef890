// SDP edits the call page and the watch page share.

// Music: tell the shard we decode stereo. Browsers answer an Opus offer without
// `stereo=1`, and then mix what they receive down to mono.
export function preferStereo(sdp) {
  const opus = [...sdp.matchAll(/^a=rtpmap:(\d+) opus\/48000/gim)].map((m) => m[1]);
  let out = sdp;
  for (const pt of opus) {
    out = out.replace(new RegExp(`^(a=fmtp:${pt} .*?)(\\r?)$`, 'm'), (line, body, cr) =>
      (/(^|;| )stereo=1/.test(body) ? line : `${body};stereo=1${cr}`));
  }
  return out;
}

const DEPENDENCY_DESCRIPTOR = 'https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension';

// A publisher offer as sent to the shard: the AV1 dependency descriptor is offered only in
// video sections whose first codec is AV1, where the shard needs it to tell layers apart.
// Negotiated beside VP8, Chromium puts it on every VP8 packet too, and with it a viewer
// behind a narrow downlink got no video (cause not found; see docs/notes/downlink-bwe.md).
export function dependencyDescriptorForAv1Only(sdp) {
  const sections = sdp.split(/(?=^m=)/m);
  return sections.map((section) => {
    const m = /^m=video \S+ \S+ (\d+)/.exec(section);
    if (!m) return section;
    const first = new RegExp(`^a=rtpmap:${m[1]} ([^/]+)/`, 'm').exec(section);
    if (first && first[1].toUpperCase() === 'AV1') return section;
    return section.replace(new RegExp(`^a=extmap:\\d+(/\\w+)? ${DEPENDENCY_DESCRIPTOR.replace(/[.#/]/g, '\\$&')}\\r?\\n`, 'gm'), '');
  }).join('');
}
