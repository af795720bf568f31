// Camera, microphone and speaker: what the token allows us to send, opening the devices
// with fallbacks, swapping one device for another, and routing sound to a chosen speaker.
// No page layout here; app.js shows the results.

// 832×624 at 20 fps: Chromium sends all three simulcast layers (call.js SIMULCAST) only
// from 960×540's pixel count up (its layer count goes by resolution), 4:3 fills the 4:3
// tiles, and the three encodings together cost the sending machine about 1.8 times what
// one 640×480 stream at 24 fps did, not three times.
const VIDEO = { width: { ideal: 832 }, height: { ideal: 624 }, frameRate: { ideal: 20 } };

/** Media kinds the token's grants allow us to publish; everything if we cannot tell. */
export function allowedKinds(claims) {
  if (!claims || !Array.isArray(claims.grants)) return { audio: true, video: true };
  const g = new Set(claims.grants);
  return { audio: g.has("publish") && g.has("audio"), video: g.has("publish") && g.has("video") };
}

/**
 * Open what we may send, falling back to audio only, then video only.
 * Returns {stream, hint} where hint is the i18n key describing the outcome.
 */
export async function openDevices(allowed) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return { stream: null, hint: "device.insecure" };
  }
  if (!allowed.audio && !allowed.video) return { stream: null, hint: "device.listenOnly" };
  const attempts = [
    [{ audio: true, video: VIDEO }, "device.ready"],
    [{ audio: true }, "device.audioOnly"],
    [{ video: VIDEO }, "device.videoOnly"],
  ].filter(([c]) => (!c.audio || allowed.audio) && (!c.video || allowed.video));
  let lastError = null;
  for (const [constraints, hint] of attempts) {
    try {
      return { stream: await navigator.mediaDevices.getUserMedia(constraints), hint };
    } catch (err) {
      lastError = err;
      if (err.name === "NotAllowedError" || err.name === "SecurityError") break;
    }
  }
  const name = lastError && lastError.name;
  const hint =
    name === "NotAllowedError" || name === "SecurityError"
      ? "device.denied"
      : name === "NotFoundError" || name === "OverconstrainedError"
        ? "device.notFound"
        : "device.failed";
  return { stream: null, hint };
}

/**
 * The devices of each kind, for a choice: {video, audio, output: [MediaDeviceInfo]}.
 * `output` (speakers, headsets) only where the page can route sound to one
 * (`canChooseOutput`); browsers list them only once camera or microphone were allowed.
 */
export async function listInputs() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) {
    return { video: [], audio: [], output: [] };
  }
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.deviceId);
  return {
    video: devices.filter((d) => d.kind === "videoinput"),
    audio: devices.filter((d) => d.kind === "audioinput"),
    output: canChooseOutput() ? devices.filter((d) => d.kind === "audiooutput") : [],
  };
}

/**
 * Whether sound can be sent to a chosen speaker: `setSinkId` on media elements
 * (Chromium; Firefox from 116; not Safari). Elsewhere the device's default output plays.
 */
export function canChooseOutput() {
  return typeof HTMLMediaElement !== "undefined" && "setSinkId" in HTMLMediaElement.prototype;
}

/**
 * Play `element` through the speaker `deviceId` ("" = the system default). A device that
 * went away (unplugged headset) falls back to the default instead of going silent.
 */
export async function routeOutput(element, deviceId) {
  if (!canChooseOutput() || !element || element.sinkId === deviceId) return;
  try {
    await element.setSinkId(deviceId);
  } catch {
    if (deviceId) await element.setSinkId("").catch(() => {});
  }
}

/** Replace the stream's track of `kind` with one from `deviceId`, in place. */
export async function swapDevice(stream, kind, deviceId) {
  const old = kind === "video" ? stream.getVideoTracks()[0] : stream.getAudioTracks()[0];
  if (!old || !deviceId) return;
  const exact = { deviceId: { exact: deviceId } };
  const constraints = kind === "video" ? { video: { ...VIDEO, ...exact } } : { audio: exact };
  const fresh = await navigator.mediaDevices.getUserMedia(constraints);
  const track = kind === "video" ? fresh.getVideoTracks()[0] : fresh.getAudioTracks()[0];
  track.enabled = old.enabled;
  stream.removeTrack(old);
  old.stop();
  stream.addTrack(track);
}

/**
 * Follow the microphone's loudness (0..1) so people can see they are heard before joining.
 * Returns a stop function. Uses an AnalyserNode; nothing leaves the page.
 */
export function meterLevel(stream, onLevel) {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx || !stream || stream.getAudioTracks().length === 0) return () => {};
  const ctx = new Ctx();
  const source = ctx.createMediaStreamSource(stream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 512;
  source.connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  let frame = 0;
  const tick = () => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const v of samples) sum += v * v;
    onLevel(Math.min(1, Math.sqrt(sum / samples.length) * 4));
    frame = requestAnimationFrame(tick);
  };
  // A context made before any click may start suspended; the first click wakes it.
  const wake = () => ctx.resume().catch(() => {});
  document.addEventListener("pointerdown", wake, { once: true });
  wake();
  tick();
  return () => {
    cancelAnimationFrame(frame);
    document.removeEventListener("pointerdown", wake);
    source.disconnect();
    ctx.close().catch(() => {});
  };
}
