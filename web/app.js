// Entry point of the join page: read the token from the link, show the camera preview,
// join, and wire the call (call.js) to the tiles (ui.js). Tests reach the live objects
// through window.roundtable (peer connections, track map, timings).

import { Call } from "./call.js";
import { ChatPanel } from "./chat.js";
import {
  allowedKinds,
  canChooseOutput,
  listInputs,
  meterLevel,
  openDevices,
  routeOutput,
  swapDevice,
} from "./devices.js";
import { InviteDialog, Panel, QrDialog } from "./moderation.js";
import { applyStatic, errorMessage, lang, onLangChange, roleLabel, setLang, t, tRole } from "./i18n.js";
import { initials, Tiles } from "./ui.js";

const TOKEN_KEY = "roundtable.token";
const SPEAKER_KEY = "roundtable.speaker"; // the chosen speaker, for this tab only
const RETRYABLE = new Set([
  "internal",
  "timeout",
  "too_many_requests",
  "sdp_invalid",
  "unknown",
  "replaced",
  "wrong_node",
  "unavailable",
  "node_draining",
  "server_shutdown",
]);
// Refusals of the link check that no retry can fix: said before the camera starts.
const FINAL_LINK_CODES = new Set([
  "room_closed",
  "room_ended",
  "token_expired",
  "token_revoked",
  "token_malformed",
  "token_bad_signature",
  "token_bad_algorithm",
  "token_claims_missing",
  "token_wrong_audience",
  "token_wrong_issuer",
  "invite_used",
  "invite_revoked",
]);

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  claims: null,
  stream: null,
  call: null,
  tiles: null,
  micOn: true,
  camOn: true,
  statusKey: null,
  statusVars: {},
  statusError: null, // {code, message} when the status line shows a server error
  deviceKey: null,
  ended: null, // {titleKey, code, message}
  lastError: null, // the last `error` event or failed request, shown if we get disconnected
  panel: null,
  chat: null,
  invite: null,
  mutedByHost: new Set(), // kinds a moderator muted; turning them on asks the server first
  screen: null, // the shared screen's track while sharing
  output: "", // the chosen speaker's deviceId ("" = the system default)
  testSound: null, // the "Ton testen" <audio>, made on the first click
};

/** Observable for tests and for debugging in the console. */
const roundtable = {
  pcs: { publish: null, subscribe: null },
  trackMap: new Map(),
  you: null,
  metrics: { joinClickedAt: null, firstRemoteFrameAt: null, joinToFirstFrameMs: null },
  output: "", // the speaker chosen on the page (deviceId), applied to every remote tile
  testSound: null,
  view: [], // the last `view` report sent to the server (what the SFU knows we show)
};
window.roundtable = roundtable;

// --- token ---------------------------------------------------------------------------

function readToken() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const fromLink = params.get("token");
  // The QR code at the caseworker's desk adds `same=1`: the phone is in the same room.
  if (params.get("same") === "1") state.sameRoomLink = true;
  if (fromLink) {
    // Keep it for a reload of this tab only, and take it out of the address bar
    // (and so out of screenshots, bookmarks and screen shares).
    try {
      sessionStorage.setItem(TOKEN_KEY, fromLink);
    } catch {
      // not fatal
    }
    history.replaceState(null, "", location.pathname + location.search);
    return fromLink;
  }
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

/** The JWT payload, for display only: the server verifies, the page never trusts it. */
export function decodeClaims(token) {
  const parts = String(token || "").split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "===".slice((b64.length + 3) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

function hasGrant(name) {
  return Boolean(state.claims && Array.isArray(state.claims.grants) && state.claims.grants.includes(name));
}

/** Our role as the link says (for wording only), "client" when the link is unreadable. */
function myRole() {
  return (state.claims && state.claims.role) || "client";
}

function roleLabelWithOrg(claims) {
  const role = roleLabel(claims.role);
  return typeof claims.org === "string" && claims.org ? `${role} · ${claims.org}` : role;
}

// --- status line and views -----------------------------------------------------------

const LOG_KEEP = 30;

/**
 * The visible status line shows the latest message; every message is also added to the
 * message log (role="log"), so a screen reader hears each one in turn instead of one
 * line that overwrites itself. A re-render in another language only redraws the line.
 */
function showLine(text, log = true) {
  $("status").textContent = text;
  if (!text || !log) return;
  const list = $("messages");
  const li = document.createElement("li");
  li.textContent = text;
  list.append(li);
  while (list.children.length > LOG_KEEP) list.firstElementChild.remove();
}

function setStatus(key, vars = {}, log = true) {
  state.statusKey = key;
  state.statusVars = vars;
  state.statusError = null;
  showLine(key ? t(key, vars) : "", log);
}

/** A server error in the status line; re-rendered when the language changes. */
function setStatusError(code, message, log = true) {
  setStatus(null);
  state.statusError = { code, message };
  showLine(errorMessage(code, message, myRole()), log);
}

/** Say something that is no status (a chat line): into the status line, as it comes. */
function announce(text) {
  state.statusKey = null;
  state.statusError = null;
  showLine(text);
}

/** The role-specific key when there is one (`status.hostAway.partner`), else the general. */
function tRoleKey(key, role) {
  const specific = `${key}.${role}`;
  return t(specific) !== specific ? specific : key;
}

/**
 * Ask the server whether the link still works, before the camera starts: an ended
 * session or a spent link says so at once. Network trouble is left to the join.
 */
async function checkLink() {
  try {
    const resp = await fetch(`/api/rooms/${encodeURIComponent(state.claims.room)}`, {
      headers: { Authorization: `Bearer ${state.token}` },
      cache: "no-store",
    });
    if (resp.ok) return null;
    const body = await resp.json().catch(() => ({}));
    return body && FINAL_LINK_CODES.has(body.error) ? body : null;
  } catch {
    return null;
  }
}

function narrow() {
  return window.matchMedia("(max-width: 760px)").matches;
}

function showView(name) {
  for (const v of ["prejoin", "waiting", "call", "ended"]) $(`view-${v}`).hidden = v !== name;
  $("callbar").hidden = name !== "call";
  document.body.dataset.view = name;
}

function showEnded(titleKey, code = null, message = "") {
  state.ended = { titleKey, code, message };
  setStatus(null); // the view says it all; no echo in the status line
  renderEnded();
  showView("ended");
  // Joining again helps after leaving or a passing fault, not with a refused link.
  $("rejoin-button").hidden = !state.token || (code !== null && !RETRYABLE.has(code));
  $("ended-title").tabIndex = -1;
  $("ended-title").focus();
}

function renderEnded() {
  if (!state.ended) return;
  const { titleKey, code, message } = state.ended;
  $("ended-title").textContent = t(titleKey);
  $("ended-text").textContent = code ? errorMessage(code, message, myRole()) : message ? t(message) : "";
  $("ended-text").dataset.error = code || "";
  // Never the server's own (English) words on a German page: every code has our text
  // (tests/test_i18n.py), and an unknown one falls back to the server's message above.
  $("ended-detail").hidden = true;
  $("ended-detail").textContent = "";
}

// --- devices -------------------------------------------------------------------------

function setDeviceHint(key) {
  state.deviceKey = key;
  $("device-hint").textContent = key ? t(key) : "";
}

async function startPreview() {
  setDeviceHint("device.starting");
  // Ask only for what the token lets us send (the server enforces it anyway).
  const { stream, hint } = await openDevices(allowedKinds(state.claims));
  setDeviceHint(hint);
  return stream;
}

/**
 * Offer a choice of camera and microphone when there is more than one of a kind, and of
 * the speaker (with a test sound) whenever sound can be routed; the speaker row is shown
 * to everyone, also to those who take part without camera or microphone.
 */
async function showDeviceChoice() {
  const inputs = await listInputs();
  showSpeakerChoice(inputs.output);
  if (!state.stream) {
    $("camera-row").hidden = $("mic-row").hidden = true;
    return;
  }
  for (const [kind, selectId, rowId, labelKey] of [
    ["video", "camera-select", "camera-row", "device.camera"],
    ["audio", "mic-select", "mic-row", "device.microphone"],
  ]) {
    const select = $(selectId);
    select.replaceChildren(
      ...inputs[kind].map((d, i) => {
        const opt = document.createElement("option");
        opt.value = d.deviceId;
        opt.textContent = d.label || `${t(labelKey)} ${i + 1}`;
        return opt;
      }),
    );
    const track = localTrack(kind);
    const current = track && track.getSettings().deviceId;
    if (current) select.value = current;
    $(rowId).hidden = !(Boolean(track) && inputs[kind].length > 1);
  }
}

function savedOutput() {
  try {
    return sessionStorage.getItem(SPEAKER_KEY) || "";
  } catch {
    return "";
  }
}

/**
 * The speaker list where the browser can route sound (`setSinkId`), else a note that the
 * device's own setting decides. A remembered speaker that is gone (headset unplugged)
 * leaves the system default in use until it is back.
 */
function showSpeakerChoice(outputs) {
  const select = $("speaker-select");
  const ids = outputs.map((d) => d.deviceId);
  select.replaceChildren(
    ...outputs.map((d, i) => {
      const opt = document.createElement("option");
      opt.value = d.deviceId;
      opt.textContent = d.label || `${t("device.speaker")} ${i + 1}`;
      return opt;
    }),
  );
  const wanted = savedOutput();
  if (wanted && ids.includes(wanted)) applyOutput(wanted);
  else if (state.output && !ids.includes(state.output)) applyOutput("");
  if (ids.length) select.value = state.output || (ids.includes("default") ? "default" : ids[0]);
  select.hidden = outputs.length < 2;
  $("speaker-note").hidden = canChooseOutput();
}

/** Route every remote sound, the lobby alert and the test sound to `deviceId`. */
function applyOutput(deviceId) {
  state.output = deviceId;
  roundtable.output = deviceId;
  const done = [state.tiles.setOutput(deviceId)];
  if (state.panel) done.push(state.panel.setOutput(deviceId));
  if (state.testSound) done.push(routeOutput(state.testSound, deviceId));
  return Promise.all(done);
}

async function chooseOutput(deviceId) {
  try {
    sessionStorage.setItem(SPEAKER_KEY, deviceId);
  } catch {
    // not fatal: the choice holds until the page is left
  }
  await applyOutput(deviceId);
  if (inCall) {
    const option = $("speaker-select").selectedOptions[0];
    setStatus("device.speakerChosen", { name: option ? option.textContent : "" });
  }
}

/** "Ton testen": a short local sound through the chosen speaker. */
async function playTestSound() {
  if (!state.testSound) {
    state.testSound = new Audio("/static/sounds/test.wav");
    roundtable.testSound = state.testSound;
  }
  const sound = state.testSound;
  await routeOutput(sound, state.output);
  sound.currentTime = 0;
  try {
    await sound.play();
    setStatus("device.testPlaying");
  } catch {
    setStatus("device.testFailed");
  }
}

async function chooseDevice(kind, deviceId) {
  try {
    await swapDevice(state.stream, kind, deviceId);
    showPreview(state.stream);
    if (state.call && inCall) {
      // Mid-call: the publish leg sends the new device without renegotiating.
      await state.call.replaceLocalTrack(kind, localTrack(kind));
      state.tiles.refreshSelf(state.stream);
    }
  } catch {
    setDeviceHint("device.failed");
    if (inCall) setStatus("device.failed");
  }
}

let stopMeter = () => {};

/** The microphone level bar under the preview, until we join. */
function startMeter(stream) {
  stopMeter();
  const bar = $("mic-level");
  stopMeter = meterLevel(stream, (level) => {
    const mic = localTrack("audio");
    bar.style.setProperty("--level", String(mic && mic.enabled ? level : 0));
  });
}

function showPreview(stream) {
  if (!inCall) startMeter(stream);
  const video = $("preview");
  video.srcObject = null; // re-assign so a swapped track shows at once
  video.srcObject = stream;
  video.play().catch(() => {});
  updateToggles();
}

// --- toggles -------------------------------------------------------------------------

function localTrack(kind) {
  if (!state.stream) return null;
  return (kind === "audio" ? state.stream.getAudioTracks() : state.stream.getVideoTracks())[0] || null;
}

function updateToggles() {
  const mic = localTrack("audio");
  const cam = localTrack("video");
  state.micOn = Boolean(mic && mic.enabled);
  state.camOn = Boolean(cam && cam.enabled);
  for (const btn of document.querySelectorAll('[data-action="mic"]')) {
    btn.disabled = !mic;
    btn.setAttribute("aria-pressed", String(!state.micOn));
    btn.setAttribute("aria-label", t(state.micOn ? "call.micOn" : "call.micOff"));
    btn.classList.toggle("is-off", !state.micOn);
  }
  for (const btn of document.querySelectorAll('[data-action="cam"]')) {
    btn.disabled = !cam;
    btn.setAttribute("aria-pressed", String(!state.camOn));
    btn.setAttribute("aria-label", t(state.camOn ? "call.camOn" : "call.camOff"));
    btn.classList.toggle("is-off", !state.camOn);
  }
  $("view-prejoin").classList.toggle("no-video", !state.camOn);
  if (state.tiles) {
    state.tiles.setLocalMicEnabled(state.micOn);
    state.tiles.setLocalVideoEnabled(state.camOn);
  }
}

function toggle(kind, { quiet = false } = {}) {
  const track = localTrack(kind);
  if (!track) return;
  if (!track.enabled && state.mutedByHost.has(kind) && state.call) {
    // A moderator muted us: the server resumes forwarding only when we say so.
    state.mutedByHost.delete(kind);
    state.call.request("unmute", { kind }).catch((err) => setStatusError(err.code, err.message));
  }
  // Disabling the track keeps the negotiated sender: others get silence / black frames
  // and the camera light stays under the browser's control.
  track.enabled = !track.enabled;
  if (kind === "video" && state.call) state.call.setSending("video", track.enabled).catch(() => {});
  // Everyone sees who switched their microphone or camera off.
  if (state.call) {
    state.call.request("self.mute", { kind, muted: !track.enabled }).catch(() => {});
  }
  updateToggles();
  if (quiet) return;
  if (kind === "audio") setStatus(track.enabled ? "status.micOn" : "status.micOff");
  else setStatus(track.enabled ? "status.camOn" : "status.camOff");
}

// --- screen sharing --------------------------------------------------------------------

function canShareScreen() {
  return (
    hasGrant("screen") &&
    Boolean(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia) &&
    Boolean(localTrack("video"))
  );
}

function updateScreenButton() {
  const btn = $("screen-toggle");
  btn.hidden = !canShareScreen();
  const sharing = Boolean(state.screen);
  btn.setAttribute("aria-pressed", String(sharing));
  btn.setAttribute("aria-label", t(sharing ? "call.screenOff" : "call.screenOn"));
  btn.title = t(sharing ? "call.screenOff" : "call.screenOn");
  btn.classList.toggle("is-active", sharing);
}

async function toggleScreen() {
  if (state.screen) {
    stopScreen();
    return;
  }
  if (!state.call) return;
  let track = null;
  try {
    const display = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    track = display.getVideoTracks()[0];
    await state.call.shareScreen(track);
    // The others' pages enlarge a shared screen; they learn of it from the roster.
    state.call.request("screen.share", { sharing: true }).catch(() => {});
  } catch (err) {
    if (track) track.stop();
    // Cancelling the browser's picker is a choice, not an error.
    if (err && err.name !== "NotAllowedError") setStatus("status.screenFailed");
    return;
  }
  state.screen = track;
  track.addEventListener("ended", stopScreen); // "Stop sharing" in the browser's own bar
  state.tiles.setSelfScreen(new MediaStream([track]), state.stream);
  updateScreenButton();
  setStatus("status.screenOn");
}

function stopScreen() {
  const track = state.screen;
  if (!track) return;
  state.screen = null;
  track.stop();
  if (state.call) {
    state.call.shareScreen(null).catch(() => {});
    state.call.request("screen.share", { sharing: false }).catch(() => {});
  }
  state.tiles.setSelfScreen(null, state.stream);
  updateToggles();
  updateScreenButton();
  setStatus("status.screenOff");
}

// --- the call ------------------------------------------------------------------------

function join() {
  if (state.call) return;
  stopMeter();
  roundtable.metrics.joinClickedAt = performance.now();
  const button = $("join-button");
  button.disabled = true;
  button.textContent = t("prejoin.joining");
  setStatus("status.connecting");

  // In the same room as the caseworker (hybrid appointment, own phone at the desk): start
  // with microphone and speaker off, or the two devices echo. Both can be turned on.
  if (!$("same-room-row").hidden && $("same-room").checked) {
    const mic = localTrack("audio");
    if (mic && mic.enabled) toggle("audio", { quiet: true });
    state.tiles.setSpeakerOff(true);
    $("sound-button").hidden = false;
  }
  const call = new Call({ token: state.token, stream: state.stream, consent: $("consent").checked });
  state.call = call;
  roundtable.call = call;
  roundtable.pcs = call.pcs;

  call.addEventListener("welcome", ({ detail }) => {
    roundtable.you = detail.you;
    if (state.panel && detail.room) state.panel.setLocked(detail.room.locked);
    if (state.chat) {
      state.chat.setSelf(detail.you.id);
      if (detail.room) state.chat.setEnabled(detail.room.chat !== false);
    }
    if (detail.you.state === "waiting") {
      // Still only a preview: nothing is sent until someone admits us.
      $("waiting-preview").hidden = !state.stream || !state.camOn;
      $("waiting-preview").srcObject = state.stream;
      showView("waiting");
      setStatus("status.waiting");
      $("waiting-title").tabIndex = -1;
      $("waiting-title").focus();
      return;
    }
    const again = inCall; // a welcome after a reconnect
    hideReconnecting();
    enterCall(detail.you);
    if (again) setStatus("status.connected");
  });
  call.addEventListener("roster", ({ detail }) => {
    if (!state.tiles || !call.you) return;
    state.panel.setRoster(detail.participants, call.you.id);
    if (call.you.state === "admitted" || call.you.state === "connected") enterCall(call.you);
    const { joined, left } = state.tiles.applyRoster(detail.participants);
    for (const p of joined) setStatus("status.joined", { name: p.name });
    for (const p of left) setStatus("status.left", { name: p.name });
    updateCount();
  });
  call.addEventListener("media", ({ detail }) => {
    roundtable.trackMap = call.trackMap;
    if (state.tiles) state.tiles.setMedia(detail.participant, detail.stream);
  });
  call.addEventListener("media-state", ({ detail }) => {
    if (detail.state === "failed") setStatus("status.mediaFailed");
  });
  call.addEventListener("connect-error", ({ detail }) => {
    if (detail.transport) {
      setStatus("status.unreachable");
      return;
    }
    // Refused by the server (bad token, room closed …): socket.io does not retry.
    call.close();
    state.call = null;
    // Refused on the way back after the session ended for us: the ending is the news.
    const last = state.lastError;
    if (last && ENDED_TITLES[last.error]) {
      showEnded(ENDED_TITLES[last.error], last.error, last.message);
      setStatus(null);
      return;
    }
    showEnded("ended.errorTitle", detail.error || "unknown", detail.message);
    setStatus(null);
  });
  call.addEventListener("server-error", ({ detail }) => {
    // Media negotiation errors keep the call; others are followed by a disconnect.
    // Why the session is over for us (ended, removed, refused) stays the reason: a request
    // refused in the moment after it (`forbidden`) must not replace it on the ended page.
    if (state.lastError && ENDED_TITLES[state.lastError.error]) return;
    state.lastError = detail;
    setStatusError(detail.error, detail.message);
  });
  call.addEventListener("moving", () => {
    setStatus("status.moving");
  });
  call.addEventListener("reconnecting", ({ detail }) => {
    if (detail && detail.graceSeconds) {
      // The network went: media and seat are kept; say so, offer to try now, and be
      // honest once the seat is gone.
      showReconnecting(call, detail.graceSeconds);
      setStatus("status.reconnecting");
      return;
    }
    stopScreen(); // the new publish leg starts from the camera
    setStatus(detail && detail.moving ? "status.moving" : "status.reconnecting");
  });
  call.addEventListener("disconnected", () => {
    call.close();
    state.call = null;
    inCall = false;
    const err = state.lastError;
    if (err && !err.media) showEnded(ENDED_TITLES[err.error] || "ended.errorTitle", err.error, err.message);
    else showEnded("ended.closedTitle", null, "ended.closedText");
  });

  // --- counselling flows: waiting room, moderation, host presence ---------------------
  const moderator = hasGrant("moderate");
  state.panel = new Panel({
    call,
    moderator,
    onStatus: setStatus,
    onError: (code, message) => setStatusError(code, message),
    onToggle: (open) => {
      if (open && state.chat && state.chat.open && narrow()) state.chat.setOpen(false);
    },
  });
  if (state.output) state.panel.setOutput(state.output);
  $("dial-in-button").hidden = !hasGrant("invite");
  // Raise hand: for clients and partners; the caseworker sees the order in the panel.
  $("hand-toggle").hidden = moderator;
  $("hand-toggle").onclick = () => {
    const raised = $("hand-toggle").getAttribute("aria-pressed") !== "true";
    call
      .request("hand", { raised })
      .then(() => {
        $("hand-toggle").setAttribute("aria-pressed", String(raised));
        $("hand-toggle").classList.toggle("is-active", raised);
        setStatus(raised ? "hand.youRaised" : "hand.youLowered");
      })
      .catch((err) => setStatusError(err.code, err.message));
  };
  if (hasGrant("chat")) {
    state.chat = new ChatPanel({
      call,
      moderator,
      onAnnounce: (text) => announce(text),
      // On a phone there is room for one side panel at a time.
      onToggle: (open) => {
        if (open && narrow()) state.panel.setOpen(false);
      },
    });
  }
  $("end-session").hidden = !moderator;
  call.addEventListener("admitted", () => {
    if (!call.you) return;
    enterCall(call.you);
    setStatus("status.admitted");
  });
  call.addEventListener("lobby", ({ detail }) => state.panel.setLobby(detail.waiting));
  call.addEventListener("room-state", ({ detail }) => {
    state.panel.setLocked(detail.locked);
    setStatus(detail.locked ? "status.locked" : "status.unlocked");
  });
  // The session's end is enforced by the server (docs/protocol.md, "Session end"); the
  // page says so in advance, and again when a moderator moved it.
  call.addEventListener("session-ending", ({ detail }) => {
    const minutes = Math.max(1, Math.round((Number(detail.seconds_left) || 0) / 60));
    const key = minutes === 1 ? "status.sessionEndingOne" : "status.sessionEnding";
    // A banner that stays (the status line moves on with the next event), and the log.
    $("session-banner").textContent = t(key, { minutes });
    $("session-banner").hidden = false;
    setStatus(key, { minutes });
  });
  call.addEventListener("session-extended", ({ detail }) => {
    const at = new Date(detail.ends_at);
    if (Number.isNaN(at.getTime())) return;
    const time = at.toLocaleTimeString(document.documentElement.lang || undefined, {
      hour: "2-digit",
      minute: "2-digit",
    });
    $("session-banner").hidden = true;
    setStatus("status.sessionExtended", { time });
  });
  call.addEventListener("host-status", ({ detail }) => {
    if (call.you && call.you.role === "caseworker") return; // about us: nothing to tell
    const away = detail.present === false;
    $("host-banner").hidden = !away;
    const role = call.you ? call.you.role : "client";
    $("host-banner").textContent = away ? tRole("status.hostAway", role) : "";
    setStatus(tRoleKey(away ? "status.hostAway" : "status.hostBack", role));
  });
  call.addEventListener("view", ({ detail }) => {
    roundtable.view = detail.tiles; // what the SFU was told last
  });
  call.addEventListener("video-paused", ({ detail }) => {
    if (state.tiles) state.tiles.setVideoPaused(detail.participant, detail.paused);
  });
  call.addEventListener("moderation-muted", ({ detail }) => {
    const kind = detail.kind === "video" ? "video" : "audio";
    state.mutedByHost.add(kind);
    const track = localTrack(kind);
    if (track && track.enabled) toggle(kind, { quiet: true });
    setStatus(tRoleKey(kind === "video" ? "status.videoMutedByHost" : "status.mutedByHost", myRole()));
  });
  call.addEventListener("invite-delivery", ({ detail }) => {
    if (state.invite) state.invite.delivery(detail);
  });
  call.addEventListener("participant-gone", ({ detail }) => {
    setStatus("status.gone", { name: detail.name || "" });
  });
  call.addEventListener("kept-out", ({ detail }) => {
    setStatus(detail.reason === "seat_taken" ? "status.seatConflict" : "status.lockedOut", {
      name: detail.name || "",
    });
  });

  call.connect();
}

let inCall = false;
let levelTimer = null;
let reconnectTimer = null;

function showReconnecting(call, graceSeconds) {
  const banner = $("reconnect-banner");
  const text = $("reconnect-text");
  const retry = $("reconnect-retry");
  banner.hidden = false;
  retry.hidden = false;
  text.textContent = t("call.reconnectingSelf", { seconds: Math.round(graceSeconds) });
  retry.onclick = () => call.retryNow();
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(() => {
    if (call.droppedAt === null) return;
    // The server has given the seat up by now: no false hope.
    text.textContent = t("call.reconnectFailed");
    retry.textContent = t("call.rejoin");
    retry.onclick = () => window.location.reload();
  }, graceSeconds * 1000);
}

function hideReconnecting() {
  clearTimeout(reconnectTimer);
  reconnectTimer = null;
  const banner = $("reconnect-banner");
  if (banner) banner.hidden = true;
  const retry = $("reconnect-retry");
  if (retry) retry.textContent = t("call.retry");
}

const STALL_MS = 2000;
const ENDED_TITLES = {
  room_ended: "ended.endedTitle",
  session_expired: "ended.endedTitle",
  room_closed: "ended.endedTitle",
  removed: "ended.removedTitle",
  lobby_denied: "ended.deniedTitle",
  replaced: "ended.replacedTitle",
};

/**
 * A few times a second while in the call: highlight whoever speaks, and show the avatar
 * instead of a frozen or black picture for anyone whose video frames stopped coming.
 */
function watchMedia() {
  if (levelTimer !== null) return;
  let busy = false;
  const lastFrames = new Map(); // pid -> {count, at}
  levelTimer = setInterval(async () => {
    const call = state.call;
    if (!call || busy) return;
    busy = true;
    try {
      const { levels, frames } = await call.mediaLevels();
      state.tiles.setSpeaking(levels);
      const now = performance.now();
      const flowing = new Set();
      for (const [pid, count] of frames) {
        const last = lastFrames.get(pid);
        if (!last || count > last.count) lastFrames.set(pid, { count, at: now });
        if (count > 0 && now - lastFrames.get(pid).at < STALL_MS) flowing.add(pid);
      }
      state.tiles.setVideoFlowing(flowing);
    } catch {
      // a peer connection closing under us; the next tick tries again
    } finally {
      busy = false;
    }
  }, 400);
}

function enterCall(you) {
  if (!state.tiles) return;
  state.tiles.setSelf(you, state.stream);
  updateToggles();
  if (inCall) return;
  inCall = true;
  // The device choice moves along into the side panel, so it can be changed mid-call.
  $("panel-devices").append($("devices"));
  updateScreenButton();
  watchMedia();
  showView("call");
  setStatus("status.connected");
  updateCount();
  $("main").focus({ preventScroll: true });
}

function updateCount() {
  const remote = state.tiles ? state.tiles.remoteCount() : 0;
  $("count").textContent = String(remote + 1);
  $("alone").hidden = remote > 0;
}

async function leave() {
  if (state.screen) {
    state.screen.stop();
    state.screen = null;
  }
  const call = state.call;
  state.call = null;
  inCall = false;
  if (call) await call.leave();
  state.tiles.clear();
  $("preview").srcObject = null;
  state.stream = null;
  showEnded("ended.leftTitle");
  setStatus(null);
}

function firstFrame() {
  const m = roundtable.metrics;
  if (m.firstRemoteFrameAt !== null || m.joinClickedAt === null) return;
  m.firstRemoteFrameAt = performance.now();
  m.joinToFirstFrameMs = Math.round(m.firstRemoteFrameAt - m.joinClickedAt);
}

// --- language --------------------------------------------------------------------------

function renderDynamic() {
  if (state.statusKey) setStatus(state.statusKey, state.statusVars, false);
  else if (state.statusError) setStatusError(state.statusError.code, state.statusError.message, false);
  if (state.deviceKey) $("device-hint").textContent = t(state.deviceKey);
  if (state.claims) $("me-role").textContent = roleLabelWithOrg(state.claims);
  const joinButton = $("join-button");
  joinButton.textContent = t(joinButton.disabled && state.call ? "prejoin.joining" : "prejoin.join");
  renderLinkHint();
  renderEnded();
  updateToggles();
  if (state.tiles) state.tiles.relabel();
  if (state.panel) state.panel.relabel();
  if (state.chat) state.chat.relabel();
  if (inCall) updateScreenButton();
}

let linkHintKey = null;
function renderLinkHint() {
  const el = $("link-hint");
  el.hidden = !linkHintKey;
  el.textContent = linkHintKey ? t(linkHintKey) : "";
}

// --- start -----------------------------------------------------------------------------

async function main() {
  applyStatic();
  $("lang-toggle").addEventListener("click", () => setLang(lang() === "de" ? "en" : "de"));
  onLangChange(renderDynamic);

  state.token = readToken();
  state.claims = decodeClaims(state.token);
  state.tiles = new Tiles($("tiles"), {
    onFirstFrame: firstFrame,
    onAutoplayBlocked: () => {
      $("sound-button").hidden = false;
    },
    onView: (tiles) => {
      if (state.call) state.call.sendView(tiles);
    },
  });

  if (state.claims && (typeof state.claims.room !== "string" || typeof state.claims.sub !== "string")) {
    state.claims = null; // decodes, but is no room token
  }
  if (state.claims) {
    $("identity").hidden = false;
    $("me-name").textContent = state.claims.name || "";
    $("me-role").textContent = roleLabelWithOrg(state.claims);
    $("preview-avatar").textContent = initials(state.claims.name);
    if (typeof state.claims.exp === "number" && state.claims.exp * 1000 < Date.now()) {
      linkHintKey = "prejoin.expiredLink";
    }
  } else if (state.token) {
    linkHintKey = "prejoin.badLink";
  } else {
    linkHintKey = "prejoin.noLink";
    $("join-button").disabled = true;
  }
  renderLinkHint();

  for (const btn of document.querySelectorAll('[data-action="mic"]')) {
    btn.addEventListener("click", () => toggle("audio"));
  }
  for (const btn of document.querySelectorAll('[data-action="cam"]')) {
    btn.addEventListener("click", () => toggle("video"));
  }
  $("join-button").addEventListener("click", join);
  $("leave-button").addEventListener("click", leave);
  $("waiting-leave").addEventListener("click", leave);
  $("screen-toggle").addEventListener("click", toggleScreen);
  $("dial-in-button").addEventListener("click", () => {
    const roomId = (state.call && state.call.room && state.call.room.id) || state.claims.room;
    if (!state.invite) state.invite = new InviteDialog({ token: state.token, roomId });
    state.invite.open();
  });
  $("qr-button").addEventListener("click", () => {
    const roomId = (state.call && state.call.room && state.call.room.id) || state.claims.room;
    if (!state.qr) state.qr = new QrDialog({ token: state.token, roomId });
    state.qr.open();
  });
  $("end-session").addEventListener("click", () => $("end-dialog").showModal());
  $("end-cancel").addEventListener("click", () => $("end-dialog").close());
  $("end-confirm").addEventListener("click", async () => {
    $("end-dialog").close();
    if (!state.call) return;
    try {
      await state.call.request("room.end", {});
    } catch (err) {
      setStatusError(err.code, err.message);
    }
  });
  $("rejoin-button").addEventListener("click", () => location.reload());
  $("sound-button").addEventListener("click", () => {
    state.tiles.setSpeakerOff(false);
    state.tiles.enableSound();
    $("sound-button").hidden = true;
  });
  window.addEventListener("pagehide", () => {
    if (state.call) state.call.close();
  });

  // Partners are not the client of "Ihre Beratungsperson": their waiting text differs.
  const waitingText = $("waiting-text");
  waitingText.dataset.i18n = tRoleKey("waiting.text", state.claims ? state.claims.role : "client");
  waitingText.textContent = t(waitingText.dataset.i18n);

  if (state.claims) {
    setDeviceHint("ended.checking");
    const refusal = await checkLink();
    if (refusal) {
      showEnded(ENDED_TITLES[refusal.error] || "ended.errorTitle", refusal.error, refusal.message);
      document.body.dataset.ready = "true";
      return;
    }
  }
  showView("prejoin");
  updateToggles();
  // Join only once the devices have answered, so what we publish is what the preview shows.
  const joinButton = $("join-button");
  const canJoin = Boolean(state.token);
  joinButton.disabled = true;
  state.stream = await startPreview();
  if (state.stream) showPreview(state.stream);
  else updateToggles();
  state.output = savedOutput();
  await showDeviceChoice().catch(() => {});
  if (navigator.mediaDevices) {
    // A headset plugged in before joining shows up in the choice at once.
    navigator.mediaDevices.addEventListener("devicechange", () => showDeviceChoice().catch(() => {}));
  }
  $("camera-select").addEventListener("change", (ev) => chooseDevice("video", ev.target.value));
  $("mic-select").addEventListener("change", (ev) => chooseDevice("audio", ev.target.value));
  $("speaker-select").addEventListener("change", (ev) => chooseOutput(ev.target.value));
  $("speaker-test").addEventListener("click", playTestSound);
  // The link says whether the person agrees to the consent text first (client links by
  // default, docs/protocol.md); the server refuses a connect without it.
  const consent = $("consent");
  // Tokens from before the `consent` claim asked for it whenever they led to the lobby.
  const needsConsent = Boolean(state.claims && (state.claims.consent ?? state.claims.lobby));
  // Clients may sit at the caseworker's desk with their own phone (hybrid appointment).
  $("same-room-row").hidden = !(state.claims && state.claims.role === "client");
  $("same-room").checked = Boolean(state.sameRoomLink);
  $("consent-row").hidden = !needsConsent;
  const updateJoin = () => {
    joinButton.disabled = !canJoin || (needsConsent && !consent.checked);
  };
  consent.addEventListener("change", updateJoin);
  updateJoin();
  document.body.dataset.ready = "true";
}

main();
