// The signalling and media side of the page: one Socket.IO connection and two peer
// connections (publish: we offer; subscribe: the SFU offers and re-offers), exactly as
// docs/protocol.md describes. No DOM here; the UI listens to the events this class emits.

import { ViewReport } from "./view.js";

const ACK_TIMEOUT_MS = 15000;
const LIVE_STATES = new Set(["admitted", "connected"]);
// The camera as three VP8 layers, low → high (the SFU takes this order): ¼, ½ and full
// size of the 832×624 capture (devices.js). Chromium sends three layers only from about
// 960×540's pixel count up. The bitrates fit the tiles they serve: a phone's strip or a
// five-person grid (208×156), a desktop grid of three or four (416×312), one or two
// people large.
// Modest on purpose (a talking head moves little): the lower two together stay under
// 500 kbit/s, so a weak uplink still carries the middle layer. The low layer is what a
// weak downlink gets: at 15 fps and 45 kbit/s two of them and two voices (Opus with FEC,
// 50 packets/s: ~50 kbit/s each with headers) fit a 300 kbit/s link with the estimate's
// margin; at 100 kbit/s they did not, and one of the two videos was paused instead.
const SIMULCAST = [
  { rid: "l", scaleResolutionDownBy: 4, maxBitrate: 45_000, maxFramerate: 15 },
  { rid: "m", scaleResolutionDownBy: 2, maxBitrate: 350_000 },
  { rid: "h", scaleResolutionDownBy: 1, maxBitrate: 1_000_000 },
];
const MAX_RESTARTS = 3;
const RESTART_WINDOW_MS = 5 * 60 * 1000;
const QUALITY_EVERY_MS = 3000;
// Socket.IO gives up on nothing; it retries quickly so that a returning network finds
// the call within a second or two (docs/protocol.md, "Reconnecting").
const RECONNECT = { reconnectionDelay: 400, reconnectionDelayMax: 1500, randomizationFactor: 0.3 };
// Engine.IO's own reasons for a connection lost to the network (not closed by the server).
const NETWORK_LOST = new Set(["ping timeout", "transport close", "transport error"]);
// The server pings every 1.5 s but waits 10 s for the pong (a busy page is no cut; see
// signaling/socket.py). The page tells a cut itself the same way the server does: a
// ping this late *and* a media connection that stopped receiving (ICE "disconnected").
const PING_LATE_MS = 3500;
const LIVENESS_EVERY_MS = 500;

export class CallError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

/**
 * Events (CustomEvent, payload in `detail`):
 *  welcome {you, room}, roster {participants}, media {participant, stream},
 *  server-error {error, message}, connect-error {error, message, transport},
 *  disconnected {reason}, reconnecting {}, media-state {leg, state},
 *  admitted {}, lobby {waiting}, moderation-muted {kind}, host-status {present, grace_seconds},
 *  room-state {locked}, invite-delivery {id, status, attempts, message},
 *  chat-message {id, from, name, role, text, at}, chat-state {enabled},
 *  moving {reason} (node_draining / server_shutdown: the call moves to another node)
 */
export class Call extends EventTarget {
  constructor({ token, stream, consent = false }) {
    super();
    this.token = token;
    this.consent = consent; // the person ticked the consent box (the server checks for it)
    this.localStream = stream;
    this.socket = null;
    this.you = null;
    this.room = null;
    this.pcs = { publish: null, subscribe: null };
    /** mid -> {mid, participant, kind, track} from the latest subscribe.offer */
    this.trackMap = new Map();
    this._streamOwner = new Map(); // mid -> stream id seen in ontrack
    /** participant id -> {stream, trackIds} currently shown */
    this.remote = new Map();
    this.published = false;
    /** kind -> {sender, track} of the publish leg */
    this.senders = {};
    this.screenTrack = null;
    this._serverLayers = null; // rids the SFU wants from our camera (publish.layers); null: all
    this._simulcast = false; // the SFU's answer received our layers
    // The view report, sent only when it changes what the SFU does (web/view.js).
    this._view = new ViewReport((tiles) => this._sendView(tiles));
    this.leaving = false;
    this._subscribeChain = Promise.resolve();
    this._generation = 0;
    /** welcome.ice: {iceServers, iceTransportPolicy}, fresh TURN credentials per welcome */
    this.ice = { iceServers: [], iceTransportPolicy: "all" };
    // A cluster (docs/protocol.md, "Cluster"): the node this socket talks to (null: the
    // page's own), where to go when it is gone (welcome.cluster), and why we move.
    this.nodeUrl = null;
    this.cluster = [];
    this.nodeUrlPublic = null; // welcome.node_url: the node we talk to, by its public name
    this._moving = null;
    this._hops = 0;
    this._transportFailures = 0;
    // Proves a reconnect (or a reload of this tab) is this participant coming back.
    this._resumeKey = `roundtable.resume.${token.slice(-24)}`;
    this.resumeSecret = readSession(this._resumeKey);
    /** ms since epoch the signalling dropped (null: connected); reconnect grace in s */
    this.droppedAt = null;
    this.graceSeconds = 60;
    this.quality = "good";
    this._qualityTimer = null;
    this._lossSeen = null;
    this._lastRoster = [];
  }

  /** What each (re)connect attempt sends: a function, so retries send the latest. */
  _auth() {
    const auth = { token: this.token };
    if (this.consent) auth.consent = true;
    if (this.resumeSecret) {
      auth.resume = this.resumeSecret;
      // A reloaded page has no media to restart: it takes its seat over afresh.
      if (!this.pcs.publish && !this.pcs.subscribe) auth.fresh = true;
    }
    return auth;
  }

  /** Try to reconnect now rather than at the next scheduled attempt (the retry button). */
  retryNow() {
    if (this.socket && !this.socket.connected && !this.leaving) this.socket.connect();
  }

  connect() {
    // io is the vendored socket.io client, loaded as a classic script before the modules.
    const auth = (cb) => cb(this._auth());
    const options = { auth, transports: ["websocket"], forceNew: true, ...RECONNECT };
    const socket = this.nodeUrl ? window.io(this.nodeUrl, options) : window.io(options);
    this.socket = socket;

    socket.on("connect", () => {
      this._hops = 0;
      this._transportFailures = 0;
      this.droppedAt = null;
      this._pingAt = Date.now();
    });
    socket.io.on("ping", () => {
      this._pingAt = Date.now();
    });
    this._watchLiveness();
    socket.on("connect_error", (err) => {
      const data = err && err.data;
      if (socket !== this.socket || this.leaving) return;
      // The room lives on another node: go there (one extra round trip, unnoticed).
      if (data && data.error === "wrong_node" && data.url && this._hops < 5) {
        this._hops += 1;
        this._switchTo(data.url, 0);
        return;
      }
      // Shared state briefly unreachable: the server says so at once; try again soon.
      if (data && data.error === "unavailable") {
        this._emit("reconnecting", { reason: "unavailable" });
        setTimeout(() => {
          if (socket === this.socket && !this.leaving) socket.connect();
        }, 1500);
        return;
      }
      // Our node does not answer (killed): after two tries, another live node.
      if (!data) {
        this._transportFailures += 1;
        const next = this._transportFailures >= 2 ? this._nextNode() : null;
        if (next) {
          // A live node may still name the dead one as the room's owner until its lease
          // runs out (5 s): such redirects start counting afresh from here.
          this._hops = 0;
          this._switchTo(next, 300);
          return;
        }
      }
      this._emit("connect-error", {
        error: data && data.error ? data.error : null,
        message: (data && data.message) || err.message,
        // A refusal by the server (bad token …) carries data; a network failure does not,
        // and socket.io keeps retrying on its own.
        transport: !data,
      });
    });
    socket.on("welcome", (msg) => this._onWelcome(msg));
    socket.on("roster", (msg) => this._onRoster(msg));
    socket.on("subscribe.offer", (msg) => {
      const gen = this._generation;
      this._subscribeChain = this._subscribeChain
        .then(() => (gen === this._generation ? this._onSubscribeOffer(msg) : null))
        .catch((err) => this._reportError(err, "sdp_invalid"));
    });
    // Counselling flows (docs/protocol.md, issue 4).
    socket.on("admitted", () => {
      if (this.you) this.you = { ...this.you, state: "admitted" };
      this._startPublish();
      this._emit("admitted", {});
    });
    socket.on("lobby", (msg) => {
      this._emit("lobby", { waiting: msg && Array.isArray(msg.waiting) ? msg.waiting : [] });
    });
    socket.on("moderation.muted", (msg) => this._emit("moderation-muted", { kind: msg && msg.kind }));
    socket.on("host.status", (msg) => this._emit("host-status", msg || {}));
    socket.on("room.state", (msg) => this._emit("room-state", msg || {}));
    socket.on("session.ending", (msg) => this._emit("session-ending", msg || {}));
    socket.on("session.extended", (msg) => this._emit("session-extended", msg || {}));
    socket.on("invite.delivery", (msg) => this._emit("invite-delivery", msg || {}));
    socket.on("chat.message", (msg) => this._emit("chat-message", msg || {}));
    socket.on("participant.gone", (msg) => {
      const gone = this._lastRoster.find((p) => msg && p.id === msg.id);
      this._emit("participant-gone", { id: msg && msg.id, name: gone ? gone.name : "" });
    });
    socket.on("lobby.refused", (msg) => this._emit("kept-out", msg || {}));
    socket.on("seat.conflict", (msg) => this._emit("kept-out", msg || {}));
    socket.on("chat.state", (msg) => this._emit("chat-state", msg || {}));
    // The SFU cannot fit someone's video into our link now (or can again).
    socket.on("video.paused", (msg) => {
      if (msg && typeof msg.participant === "string") {
        this._emit("video-paused", { participant: msg.participant, paused: msg.paused === true });
      }
    });
    // The SFU lost consent on our publish connection (RFC 7675): it cannot restart ICE
    // there (we offer), and our pc may still say "connected". Restart that leg now.
    socket.on("publish.restart", () => {
      this._onPublishRestart().catch((err) => this._reportError(err, "sdp_invalid"));
    });
    socket.on("publish.layers", (msg) => {
      if (!msg || !Array.isArray(msg.active)) return;
      this._serverLayers = new Set(msg.active.map(String));
      this._applyLayers().catch(() => {});
    });
    const moving = (msg) => {
      this._moving = msg || {};
      if (msg && Array.isArray(msg.cluster) && msg.cluster.length) this.cluster = msg.cluster;
      this._emit("moving", { reason: (msg && msg.error) || "server_shutdown" });
    };
    socket.on("node_draining", moving);
    socket.on("server_shutdown", moving);
    socket.on("error", (msg) => {
      this._emit("server-error", {
        error: msg && msg.error ? msg.error : "unknown",
        message: msg && msg.message ? msg.message : "",
      });
    });
    socket.on("disconnect", (reason) => {
      if (socket !== this.socket) return;
      console.info("roundtable: signalling disconnected:", reason);
      const cut = this._cut;
      this._cut = false;
      if (!this.leaving && !this._moving && (NETWORK_LOST.has(reason) || cut)) {
        // The network went: keep both peer connections, the server keeps our seat and
        // media for the reconnect grace; on the way back we restart ICE.
        this.droppedAt = Date.now();
        this._emit("reconnecting", { reason, graceSeconds: this.graceSeconds });
        return;
      }
      this._teardownMedia();
      if (this.leaving) return;
      if (this._moving) {
        // Told why: reconnect to a live node without a reload (same token, same seat).
        this._moving = null;
        this._emit("reconnecting", { reason, moving: true });
        this._switchTo(this._nextNode() || this._here(), 300);
        return;
      }
      if (reason === "io server disconnect") {
        this._emit("disconnected", { reason });
      } else {
        this._emit("reconnecting", { reason });
      }
    });
  }

  /**
   * A network cut, told quickly without a short ping timeout: no ping for PING_LATE_MS
   * while a media connection has stopped receiving. Then the signalling is closed as
   * lost, and socket.io reconnects (resume) as after a ping timeout.
   */
  _watchLiveness() {
    if (this._livenessTimer) return;
    this._livenessTimer = setInterval(() => {
      const socket = this.socket;
      if (!socket || !socket.connected || this.leaving || !this._pingAt) return;
      if (Date.now() - this._pingAt < PING_LATE_MS) return;
      const legs = [this.pcs.publish, this.pcs.subscribe].filter(Boolean);
      const stalled = legs.some((pc) => ["disconnected", "failed"].includes(pc.iceConnectionState));
      if (!stalled) return;
      console.info("roundtable: no ping and no media: the network is gone");
      this._cut = true;
      socket.io.engine.close();
    }, LIVENESS_EVERY_MS);
  }

  _here() {
    return this.nodeUrl || window.location.origin;
  }

  /** Another node of the cluster than the current one, if the last welcome named one. */
  _nextNode() {
    // welcome.node_url is this node under its public name, which the page may know by
    // another address: never "another node" when our own network is what failed.
    const here = this._here();
    const others = this.cluster.filter((url) => url !== here && url !== this.nodeUrlPublic);
    return others.length ? others[0] : null;
  }

  /** Close this socket and connect the same token to ``url`` after ``delayMs``. */
  _switchTo(url, delayMs) {
    const old = this.socket;
    this.socket = null;
    if (old) {
      old.off();
      old.disconnect();
    }
    setTimeout(() => {
      if (this.leaving) return;
      this.nodeUrl = url === window.location.origin ? null : url;
      this.connect();
    }, delayMs);
  }

  /** Leave on purpose: tell the server, then close everything. */
  async leave() {
    this.leaving = true;
    if (this.socket && this.socket.connected) {
      try {
        await this._request("leave", {}, 2000);
      } catch {
        // leaving anyway; the server also notices the disconnect
      }
    }
    this.close();
  }

  /** Emit a client → server event and wait for its ack (rejects with CallError). */
  request(event, payload) {
    if (!this.socket || !this.socket.connected) {
      return Promise.reject(new CallError("timeout", "not connected"));
    }
    return this._request(event, payload);
  }

  close() {
    this.leaving = true;
    clearInterval(this._livenessTimer);
    this._livenessTimer = null;
    this._teardownMedia();
    if (this.socket) this.socket.disconnect();
    if (this.localStream) for (const track of this.localStream.getTracks()) track.stop();
  }

  // --- server events -------------------------------------------------------------

  _onWelcome(msg) {
    if (typeof msg.resume === "string") {
      this.resumeSecret = msg.resume;
      writeSession(this._resumeKey, msg.resume);
    }
    if (typeof msg.reconnect_grace_seconds === "number") this.graceSeconds = msg.reconnect_grace_seconds;
    this.droppedAt = null;
    if (msg.resumed && (this.pcs.publish || this.pcs.subscribe)) {
      // Back after a network cut: same seat, same connections; only ICE starts over.
      this.you = msg.you;
      this.room = msg.room;
      if (Array.isArray(msg.cluster)) this.cluster = msg.cluster;
      if (typeof msg.node_url === "string") this.nodeUrlPublic = msg.node_url;
      this._setIce(msg.ice);
      this._emit("welcome", { you: msg.you, room: msg.room, resumed: true });
      this.restartIce().catch((err) => this._reportError(err, "sdp_invalid"));
      return;
    }
    // A welcome after a reconnect starts the media from scratch.
    this._teardownMedia();
    this._view.reset(); // a fresh server may not know what we show: tell it again
    this._serverLayers = null;
    this.you = msg.you;
    this.room = msg.room;
    if (Array.isArray(msg.cluster)) this.cluster = msg.cluster;
    if (typeof msg.node_url === "string") this.nodeUrlPublic = msg.node_url;
    // Every welcome (also after a reconnect) brings a new TURN credential: use the latest.
    this._setIce(msg.ice);
    this._emit("welcome", { you: msg.you, room: msg.room });
    if (LIVE_STATES.has(msg.you.state)) this._startPublish();
  }

  _onRoster(msg) {
    const participants = Array.isArray(msg.participants) ? msg.participants : [];
    this._lastRoster = participants;
    if (this.you) {
      const me = participants.find((p) => p.id === this.you.id);
      if (me) {
        this.you = me;
        // Admitted from the waiting room: start sending now.
        if (LIVE_STATES.has(me.state) && !this.published) this._startPublish();
      }
    }
    this._emit("roster", { participants });
  }

  _setIce(ice) {
    const given = ice || {};
    this.ice = {
      iceServers: Array.isArray(given.iceServers) ? given.iceServers : [],
      iceTransportPolicy: given.iceTransportPolicy === "relay" ? "relay" : "all",
    };
  }

  /**
   * Fresh TURN credentials (`ice.refresh`) on both live legs. Call it before
   * `restartIce()`: a restart allocates new relays, and the welcome's credential may
   * have run out with the link (it bounds joining; the call runs to the session's end).
   */
  async refreshIce() {
    const resp = await this.request("ice.refresh", {});
    this._setIce(resp.ice);
    for (const pc of Object.values(this.pcs)) {
      if (pc && pc.signalingState !== "closed") pc.setConfiguration(this._rtcConfig());
    }
    return this.ice;
  }

  /**
   * ICE restart on both legs (the network changed): fresh TURN credentials, then the
   * publish leg re-offers with new ICE credentials and the SFU re-offers the subscribe
   * leg. DTLS, tracks and tiles stay as they are.
   */
  async restartIce() {
    const gen = this._generation;
    console.info("roundtable: restarting ICE");
    await this._onPublishRestart();
    if (this.pcs.subscribe && gen === this._generation) {
      await this._request("ice.restart", { pc: "subscribe" });
    }
  }

  /**
   * The publish leg's restart with fresh TURN credentials first (the restart allocates
   * new relays, and the welcome's credential may have run out): restartIce()'s first
   * half, and all of it when the SFU lost ICE consent on our publish connection
   * (`publish.restart`, asked again every 10 s while it lasts).
   */
  async _onPublishRestart() {
    if (this.ice.iceServers.length) {
      try {
        await this.refreshIce();
      } catch {
        // the welcome's credential may still do
      }
    }
    await this._restartPublish();
  }

  /** ICE restart on the publish leg alone: a re-offer with new ICE credentials. */
  async _restartPublish() {
    const gen = this._generation;
    const pub = this.pcs.publish;
    // One at a time: restartIce() (a resume) and publish.restart can meet, and both
    // would pass the "stable" test before either offers.
    if (!pub || pub.signalingState !== "stable" || !this.published || this._publishRestarting) {
      return;
    }
    this._publishRestarting = true;
    try {
      pub.restartIce();
      await pub.setLocalDescription(await pub.createOffer({ iceRestart: true }));
      const answer = await this._request("publish", { type: "offer", sdp: pub.localDescription.sdp });
      if (gen !== this._generation || pub.signalingState === "closed") return;
      await pub.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    } finally {
      this._publishRestarting = false;
    }
  }

  /** Both legs: the STUN/TURN servers and transport policy the server sent in welcome. */
  _rtcConfig() {
    return {
      bundlePolicy: "max-bundle",
      iceServers: this.ice.iceServers,
      iceTransportPolicy: this.ice.iceTransportPolicy,
    };
  }

  // --- publish leg -----------------------------------------------------------------

  _startPublish() {
    if (this.published) return;
    this.published = true;
    this._publish().catch((err) => this._reportError(err, "sdp_invalid"));
  }

  async _publish() {
    const tracks = this.localStream ? this.localStream.getTracks() : [];
    if (tracks.length === 0) return; // listen-only: nothing to publish
    const gen = this._generation;
    const pc = new RTCPeerConnection(this._rtcConfig());
    this.pcs.publish = pc;
    this._watchState(pc, "publish");
    const trickle = this._trickle(pc, "publish");
    for (const track of tracks) {
      const init = { direction: "sendonly", streams: [this.localStream] };
      if (track.kind === "video") init.sendEncodings = SIMULCAST.map((e) => ({ ...e }));
      const tr = pc.addTransceiver(track, init);
      this.senders[track.kind] = { sender: tr.sender, track };
      if (track.kind === "video" && !track.enabled) tr.sender.replaceTrack(null);
    }
    await pc.setLocalDescription(await pc.createOffer());
    const answer = await this._request("publish", { type: "offer", sdp: pc.localDescription.sdp });
    if (gen !== this._generation) return;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    this._simulcast = /^a=simulcast:recv /m.test(answer.sdp);
    await this._applyLayers().catch(() => {});
    trickle.open();
  }

  /**
   * Which camera layers to send: those the SFU says someone receives (publish.layers),
   * only the full one while a screen is shared (downscaled text is unreadable, and a
   * still screen costs little), and one full-size encoding if the SFU's answer took no
   * simulcast (the browser then sends only the first encoding, which is the small one).
   */
  async _applyLayers() {
    const entry = this.senders.video;
    if (!entry || !this.pcs.publish) return;
    const params = entry.sender.getParameters();
    if (!params.encodings || params.encodings.length === 0) return;
    const full = SIMULCAST[SIMULCAST.length - 1];
    if (!this._simulcast || params.encodings.length === 1) {
      const enc = params.encodings[0];
      const fullRate = enc.maxFramerate === undefined;
      if (enc.scaleResolutionDownBy === 1 && enc.maxBitrate === full.maxBitrate && fullRate) return;
      enc.scaleResolutionDownBy = 1;
      enc.maxBitrate = full.maxBitrate;
      delete enc.maxFramerate; // the low layer's 15 fps is not for the one full stream
      enc.active = true;
      await entry.sender.setParameters(params);
      return;
    }
    let changed = false;
    for (const enc of params.encodings) {
      const active = this.screenTrack
        ? enc.rid === full.rid
        : !this._serverLayers || this._serverLayers.has(enc.rid) || enc.rid === SIMULCAST[0].rid;
      if (enc.active !== active) {
        enc.active = active;
        changed = true;
      }
    }
    if (changed) await entry.sender.setParameters(params);
  }

  /**
   * Tell the SFU what we show of each remote participant (tiles: [{participant,
   * visible, width, height}] in device pixels), so hidden tiles cost nothing and small
   * ones get the small layer. Sent only when the layer it asks for changes, and a tile
   * only counts as hidden once it stayed so for a second (web/view.js).
   */
  sendView(tiles) {
    this._view.update(tiles);
  }

  _sendView(tiles) {
    if (!this.socket || !this.socket.connected) return false;
    if (!this.you || !LIVE_STATES.has(this.you.state)) return false;
    this._request("view", { tiles }).catch(() => this._view.reset()); // again next change
    this._emit("view", { tiles });
    return true;
  }

  // --- subscribe leg ---------------------------------------------------------------

  async _onSubscribeOffer(msg) {
    let pc = this.pcs.subscribe;
    if (!pc) {
      pc = new RTCPeerConnection(this._rtcConfig());
      this.pcs.subscribe = pc;
      this._watchState(pc, "subscribe");
      this._subscribeTrickle = this._trickle(pc, "subscribe");
      // transceiver.mid is set by the time ontrack fires; trackMap already holds this offer.
      // The SFU names each stream after its publisher: a fallback if the list lacks a mid.
      pc.ontrack = (ev) => {
        const mid = ev.transceiver.mid;
        if (mid !== null && ev.streams[0]) this._streamOwner.set(mid, ev.streams[0].id);
        this._reconcile();
      };
    }
    this.trackMap = new Map(
      (Array.isArray(msg.tracks) ? msg.tracks : []).map((t) => [String(t.mid), t]),
    );
    await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await this._request("subscribe.answer", { type: "answer", sdp: pc.localDescription.sdp });
    this._subscribeTrickle.open();
    this._reconcile();
  }

  /**
   * Rebuild "which participant's tracks do we receive" from the transceivers and the
   * offer's track list. Doing it from scratch after every negotiation copes with added,
   * removed and re-used m-lines alike.
   */
  _reconcile() {
    const pc = this.pcs.subscribe;
    const wanted = new Map(); // participant -> [track]
    if (pc) {
      for (const tr of pc.getTransceivers()) {
        if (tr.stopped || tr.mid === null) continue;
        const info =
          this.trackMap.get(tr.mid) ||
          (this._streamOwner.has(tr.mid)
            ? { participant: this._streamOwner.get(tr.mid), kind: tr.receiver.track.kind }
            : null);
        if (!info || (this.you && info.participant === this.you.id)) continue;
        const dir = tr.currentDirection;
        if (dir && dir !== "recvonly" && dir !== "sendrecv") continue;
        const track = tr.receiver.track;
        if (!track || track.readyState === "ended") continue;
        if (!wanted.has(info.participant)) wanted.set(info.participant, []);
        wanted.get(info.participant).push(track);
      }
    }
    for (const [pid, tracks] of wanted) {
      const ids = tracks.map((t) => t.id).sort().join(",");
      const prev = this.remote.get(pid);
      if (prev && prev.trackIds === ids) continue;
      const stream = new MediaStream(tracks);
      this.remote.set(pid, { stream, trackIds: ids });
      this._emit("media", { participant: pid, stream });
    }
    for (const pid of [...this.remote.keys()]) {
      if (!wanted.has(pid)) {
        this.remote.delete(pid);
        this._emit("media", { participant: pid, stream: null });
      }
    }
  }

  /**
   * Stop or resume sending a kind without renegotiating. A camera turned off sends no
   * frames at all (not black ones), so the others show the avatar and save bandwidth.
   */
  async setSending(kind, on) {
    const entry = this.senders[kind];
    if (!entry || !this.pcs.publish) return;
    if (kind === "video" && this.screenTrack) return; // a shared screen keeps going
    await entry.sender.replaceTrack(on ? entry.track : null);
  }

  /** A new device's track for `kind` (chosen mid-call): send it instead of the old one. */
  async replaceLocalTrack(kind, track) {
    const entry = this.senders[kind];
    if (!entry || !this.pcs.publish) return;
    entry.track = track;
    if (kind === "video" && (this.screenTrack || !track.enabled)) return;
    await entry.sender.replaceTrack(track);
  }

  /**
   * Share a screen track in place of the camera (null: back to the camera). Using the
   * camera's sender needs no renegotiation; the others see the screen in our tile.
   */
  async shareScreen(track) {
    const entry = this.senders.video;
    if (!entry || !this.pcs.publish) throw new CallError("forbidden", "no video is being sent");
    this.screenTrack = track;
    await entry.sender.replaceTrack(track || (entry.track.enabled ? entry.track : null));
    await this._applyLayers().catch(() => {});
  }

  /**
   * From getStats: audio level (0..1) per remote participant and for ourselves, and
   * video frames decoded so far per remote participant.
   */
  async mediaLevels() {
    const levels = new Map();
    const frames = new Map();
    const sub = this.pcs.subscribe;
    if (sub) {
      const midOfTrack = new Map();
      for (const tr of sub.getTransceivers()) {
        if (tr.mid !== null && tr.receiver.track) midOfTrack.set(tr.receiver.track.id, tr.mid);
      }
      const stats = await sub.getStats();
      stats.forEach((s) => {
        if (s.type !== "inbound-rtp") return;
        const mid = s.mid !== undefined ? String(s.mid) : midOfTrack.get(s.trackIdentifier);
        const info = this.trackMap.get(mid);
        if (!info) return;
        const pid = info.participant;
        if (s.kind === "audio" && typeof s.audioLevel === "number") {
          levels.set(pid, Math.max(levels.get(pid) || 0, s.audioLevel));
        } else if (s.kind === "video") {
          frames.set(pid, (frames.get(pid) || 0) + (s.framesDecoded || 0));
        }
      });
    }
    const pub = this.pcs.publish;
    if (pub && this.you) {
      const stats = await pub.getStats();
      stats.forEach((s) => {
        if (s.type === "media-source" && s.kind === "audio" && typeof s.audioLevel === "number") {
          levels.set(this.you.id, s.audioLevel);
        }
      });
    }
    return { levels, frames };
  }

  // --- helpers ---------------------------------------------------------------------

  /** Send local ICE candidates with `ice`; hold them until the leg's negotiation is acked. */
  _trickle(pc, leg) {
    const pending = [];
    let isOpen = false;
    const send = (candidate) => {
      if (!this.socket || !this.socket.connected) return;
      this._request("ice", { pc: leg, candidate }).catch(() => {
        // a lost candidate is not fatal: connectivity checks find the path anyway
      });
    };
    pc.onicecandidate = (ev) => {
      const c = ev.candidate
        ? { candidate: ev.candidate.candidate, sdpMid: ev.candidate.sdpMid, sdpMLineIndex: ev.candidate.sdpMLineIndex }
        : null;
      if (c && !c.candidate) return; // Chrome's empty end-of-generation marker
      if (isOpen) send(c);
      else pending.push(c);
    };
    return {
      open() {
        if (isOpen) return;
        isOpen = true;
        for (const c of pending.splice(0)) send(c);
      },
    };
  }

  _watchState(pc, leg) {
    pc.onconnectionstatechange = () => {
      this._emit("media-state", { leg, state: pc.connectionState });
      if (pc.connectionState === "failed") this._recover(pc);
    };
    this._watchQuality();
  }

  /**
   * A leg whose ICE failed while the signalling is up (UDP blocked, a new network the
   * signalling survived): restart ICE, at most a few times; the last resort reconnects
   * the signalling, which starts both legs afresh.
   */
  _recover(pc) {
    const now = Date.now();
    this._restarts = (this._restarts || []).filter((at) => now - at < RESTART_WINDOW_MS);
    if (this._restarts.length >= MAX_RESTARTS || !this.socket) return;
    setTimeout(() => {
      if (this.leaving || pc.connectionState !== "failed" || !this.socket.connected) return;
      this._restarts.push(Date.now());
      console.info("roundtable: media connection failed, recovering");
      if (this._restarts.length < MAX_RESTARTS) {
        this.restartIce().catch((err) => this._reportError(err, "sdp_invalid"));
        return;
      }
      this.resumeSecret = null; // start over: new connections, same seat
      this.socket.disconnect();
      this.socket.connect();
    }, 1000);
  }

  /**
   * Every few seconds, from getStats: how well our media gets through (loss the SFU
   * reports for what we send, loss and round trip on what we receive). Sent to the
   * server when it changes, so everyone's tile shows who is struggling.
   */
  _watchQuality() {
    if (this._qualityTimer !== null) return;
    this._qualityTimer = setInterval(() => {
      this._measureQuality().catch(() => {});
    }, QUALITY_EVERY_MS);
  }

  async _measureQuality() {
    if (!this.socket || !this.socket.connected || this.leaving) {
      // The loss over a cut is the cut's (told as 'reconnecting'), not the link's: the
      // measurement after it starts afresh (it said 'poor' for a call that came back).
      this._lossSeen = null;
      return;
    }
    let lost = 0;
    let received = 0;
    let rtt = 0;
    let sentLoss = 0;
    let down = false;
    for (const pc of Object.values(this.pcs)) {
      if (!pc) continue;
      if (pc.connectionState === "disconnected" || pc.connectionState === "failed") down = true;
      const stats = await pc.getStats();
      stats.forEach((s) => {
        if (s.type === "inbound-rtp") {
          lost += Math.max(0, s.packetsLost || 0);
          received += s.packetsReceived || 0;
        } else if (s.type === "remote-inbound-rtp") {
          // What the SFU's receiver reports say of what we send.
          if (typeof s.fractionLost === "number") sentLoss = Math.max(sentLoss, s.fractionLost);
          if (typeof s.roundTripTime === "number") rtt = Math.max(rtt, s.roundTripTime);
        }
      });
    }
    const prev = this._lossSeen;
    this._lossSeen = down ? null : { lost, received };
    let level = "lost";
    if (!down) {
      if (!prev) return; // a baseline: nothing measured yet since the call began or a cut
      const dLost = lost - prev.lost;
      const dAll = dLost + (received - prev.received);
      const lossRate = Math.max(dAll > 0 ? dLost / dAll : 0, sentLoss);
      level = lossRate > 0.05 || rtt > 0.4 ? "poor" : "good";
    }
    if (level === this.quality) return;
    this.quality = level;
    this._request("quality", { level }).catch(() => {});
  }

  _request(event, payload, timeout = ACK_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      this.socket.timeout(timeout).emit(event, payload, (err, resp) => {
        if (err) reject(new CallError("timeout", `no answer to ${event}`));
        else if (!resp || resp.error || resp.ok === false) {
          reject(new CallError(resp && resp.error ? resp.error : "unknown", resp && resp.message));
        } else resolve(resp);
      });
    });
  }

  _reportError(err, fallbackCode) {
    if (this.leaving) return;
    console.error("roundtable:", err);
    const code = err instanceof CallError ? err.code : fallbackCode;
    this._emit("server-error", { error: code, message: err.message, media: true });
  }

  _teardownMedia() {
    this._generation += 1;
    if (this._qualityTimer !== null) {
      clearInterval(this._qualityTimer);
      this._qualityTimer = null;
    }
    this._lossSeen = null;
    this.published = false;
    this.senders = {};
    this.screenTrack = null;
    for (const leg of ["publish", "subscribe"]) {
      const pc = this.pcs[leg];
      if (pc) {
        pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = null;
        pc.close();
      }
      this.pcs[leg] = null;
    }
    this.trackMap = new Map();
    this._streamOwner = new Map();
    this._subscribeChain = Promise.resolve();
    for (const pid of [...this.remote.keys()]) {
      this.remote.delete(pid);
      this._emit("media", { participant: pid, stream: null });
    }
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function readSession(key) {
  try {
    return window.sessionStorage.getItem(key);
  } catch {
    return null; // storage off: a reload then joins afresh, a reconnect still resumes
  }
}

function writeSession(key, value) {
  try {
    window.sessionStorage.setItem(key, value);
  } catch {
    // as above
  }
}
