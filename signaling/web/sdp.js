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
