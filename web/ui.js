// The participant tiles: one per admitted participant, own tile first and muted.
// Remote <video> elements carry the automation hooks data-testid="remote-video",
// data-participant and data-role.

import { routeOutput } from "./devices.js";
import { roleLabel, t } from "./i18n.js";
import { COALESCE_MS } from "./view.js";

const SHOWN_STATES = new Set(["admitted", "connected"]);
const SPEAKER_HOLD_MS = 4000; // the featured speaker stays at least this long
const STRIP_SHARE = 0.4; // of the tiles' height, at most, for the strip under the big tile
const MAX_STRIP_COLS = 6; // strip tiles no narrower than ~47 px on a 360 px phone

export function initials(name) {
  const parts = String(name || "").trim().split(/\s+/).filter(Boolean);
  if (parts.length === 0) return "?";
  const first = parts[0][0] || "";
  const last = parts.length > 1 ? parts[parts.length - 1][0] : "";
  return (first + last).toUpperCase();
}

export class Tiles {
  /**
   * @param {HTMLElement} list the <ul> holding the tiles
   * @param {{onFirstFrame?: () => void, onAutoplayBlocked?: () => void,
   *          onView?: (tiles: object[]) => void}} hooks
   */
  constructor(list, hooks = {}) {
    this.list = list;
    this.template = document.getElementById("tile-template");
    this.hooks = hooks;
    this.tiles = new Map(); // participant id -> {el, video, participant}
    this.streams = new Map(); // participant id -> MediaStream (may arrive before the roster)
    this.selfId = null;
    this.output = ""; // the chosen speaker's deviceId ("" = the system default)
    this.speaker = null; // the remote participant featured as speaking (on phones)
    this._speakerAt = 0; // when this.speaker was chosen (performance.now())
    this._speakingSince = new Map(); // pid -> ticks in a row above the threshold
    this.pausedVideo = new Set(); // pids whose video the server paused for our link
    if ("ResizeObserver" in window) new ResizeObserver(() => this._layout()).observe(list);
    // What we show of each remote participant goes to the SFU (onView), which sends a
    // hidden tile nothing and a small one the small layer: watch size, scrolling and
    // the tab's visibility.
    this._inView = new Map(); // pid -> whether its tile intersects the viewport
    this._viewTimer = null;
    this._tileSize =
      "ResizeObserver" in window ? new ResizeObserver(() => this._viewChanged()) : null;
    this._tileSeen =
      "IntersectionObserver" in window
        ? new IntersectionObserver((entries) => {
            for (const e of entries) this._inView.set(e.target.dataset.participant, e.isIntersecting);
            this._viewChanged();
          })
        : null;
    document.addEventListener("visibilitychange", () => this._viewChanged());
  }

  /**
   * The view report: per remote participant, whether its tile is visible (on screen,
   * tab shown) and its size in device pixels (rounded to 8 so a wobble is no change).
   */
  views() {
    const dpr = window.devicePixelRatio || 1;
    const out = [];
    for (const [pid, tile] of this.tiles) {
      if (pid === this.selfId) continue;
      const rect = tile.el.getBoundingClientRect();
      const width = Math.min(16384, Math.round((rect.width * dpr) / 8) * 8);
      const height = Math.min(16384, Math.round((rect.height * dpr) / 8) * 8);
      const visible =
        document.visibilityState !== "hidden" && this._inView.get(pid) !== false && width > 0 && height > 0;
      out.push({ participant: pid, visible, width: visible ? width : 0, height: visible ? height : 0 });
    }
    return out;
  }

  _viewChanged() {
    if (!this.hooks.onView || this._viewTimer !== null) return;
    // Collected: a layout change resizes every tile at once, and whatever changes within
    // COALESCE_MS goes out as one look at the page (web/view.js decides what is sent).
    this._viewTimer = setTimeout(() => {
      this._viewTimer = null;
      this.hooks.onView(this.views());
    }, COALESCE_MS);
  }

  setSelf(participant, localStream) {
    this.selfId = participant.id;
    const tile = this._ensure(participant, true);
    tile.video.muted = true;
    // Every roster calls this: assign only once, re-assigning would reload the element.
    if (tile.video.srcObject !== localStream) {
      tile.video.srcObject = localStream;
      if (localStream) tile.video.play().catch(() => {});
    }
    this._updateVideoPresence(tile);
  }

  /** Apply a roster: add, update and remove tiles; returns {joined, left} participants. */
  applyRoster(participants) {
    const live = participants.filter((p) => SHOWN_STATES.has(p.state));
    const liveIds = new Set(live.map((p) => p.id));
    const joined = [];
    const left = [];
    for (const p of live) {
      if (!this.tiles.has(p.id) && p.id !== this.selfId) joined.push(p);
      this._ensure(p, p.id === this.selfId);
    }
    for (const [pid, tile] of [...this.tiles]) {
      if (pid === this.selfId || liveIds.has(pid)) continue;
      left.push(tile.participant);
      this.remove(pid);
    }
    return { joined, left };
  }

  remove(pid) {
    const tile = this.tiles.get(pid);
    if (!tile) return;
    tile.video.srcObject = null;
    if (this._tileSize) this._tileSize.unobserve(tile.el);
    if (this._tileSeen) this._tileSeen.unobserve(tile.el);
    this._inView.delete(pid);
    tile.el.remove();
    this.tiles.delete(pid);
    this.streams.delete(pid);
    this.pausedVideo.delete(pid);
    this._layout();
  }

  clear() {
    for (const pid of [...this.tiles.keys()]) this.remove(pid);
    this.streams.clear();
  }

  /** Attach (or detach, stream=null) the media received for a participant. */
  setMedia(pid, stream) {
    if (stream) this.streams.set(pid, stream);
    else this.streams.delete(pid);
    const tile = this.tiles.get(pid);
    if (tile) this._attach(tile);
  }

  /** Same room as someone else in the call: remote sound stays off until switched on. */
  setSpeakerOff(off) {
    this.speakerOff = off;
    for (const [pid, tile] of this.tiles) if (pid !== this.selfId) tile.video.muted = off;
  }

  /** Play every remote tile's sound through the speaker `deviceId`, now and on new tiles. */
  setOutput(deviceId) {
    this.output = deviceId;
    const remote = [...this.tiles.values()].filter((tile) => !tile.isSelf);
    return Promise.all(remote.map((tile) => routeOutput(tile.video, deviceId)));
  }

  /** Unmute every remote video after the browser blocked autoplay with sound. */
  enableSound() {
    for (const [pid, tile] of this.tiles) {
      if (pid === this.selfId) continue;
      tile.video.muted = false;
      tile.video.play().catch(() => {});
    }
  }

  /** Our stream's tracks changed (another device): make the own tile show the new ones. */
  refreshSelf(localStream) {
    const tile = this.tiles.get(this.selfId);
    if (!tile || tile.el.classList.contains("sharing")) return;
    tile.video.srcObject = null;
    tile.video.srcObject = localStream;
    tile.video.play().catch(() => {});
  }

  /** Show a shared screen (or, with null, the camera again) in our own tile. */
  setSelfScreen(screenStream, localStream) {
    const tile = this.tiles.get(this.selfId);
    if (!tile) return;
    tile.el.classList.toggle("sharing", Boolean(screenStream));
    tile.video.srcObject = screenStream || localStream;
    tile.video.play().catch(() => {});
    if (screenStream) tile.el.classList.remove("no-video");
    else this._updateVideoPresence(tile);
  }

  setLocalVideoEnabled(enabled) {
    const tile = this.tiles.get(this.selfId);
    if (tile && !tile.el.classList.contains("sharing")) tile.el.classList.toggle("no-video", !enabled);
  }

  setLocalMicEnabled(enabled) {
    const tile = this.tiles.get(this.selfId);
    if (tile) tile.el.classList.toggle("mic-muted", !enabled);
  }

  /**
   * Mark who is speaking (levels: participant id -> 0..1), and pick the speaker featured
   * beside the main person on a phone. That choice moves the big tiles (and so what the
   * SFU sends), so it is sticky: the main person speaking never takes the place (they are
   * big anyway), the featured speaker keeps it while still speaking, and a new one takes
   * it only after SPEAKER_HOLD_MS. Without this, two people talking at once (or Chromium's
   * fake microphones, which beep in step) swapped the layout about every 0.5 s.
   */
  setSpeaking(levels, threshold = 0.03) {
    const main = this._mainPid();
    const candidates = [];
    for (const [pid, tile] of this.tiles) {
      const level = levels.get(pid) || 0;
      const micOff = tile.el.classList.contains("mic-muted");
      const speaking = level > threshold && !micOff;
      tile.el.classList.toggle("speaking", speaking);
      // Two ticks in a row (~0.8 s): a cough or a click does not move the big tile.
      const ticks = speaking ? (this._speakingSince.get(pid) || 0) + 1 : 0;
      this._speakingSince.set(pid, ticks);
      if (ticks >= 2 && pid !== this.selfId && pid !== main) candidates.push(pid);
    }
    if (candidates.length === 0 || candidates.includes(this.speaker)) return;
    const now = performance.now();
    if (this.speaker && this.tiles.has(this.speaker) && now - this._speakerAt < SPEAKER_HOLD_MS) return;
    this.speaker = candidates[0];
    this._speakerAt = now;
    this._layout();
  }

  /** Remote tiles whose video frames are not arriving show the avatar instead. */
  setVideoFlowing(flowing) {
    for (const [pid, tile] of this.tiles) {
      if (pid === this.selfId) continue;
      tile.el.classList.toggle("video-stalled", !flowing.has(pid));
    }
  }

  /**
   * The server paused someone's video for our weak link (or resumed it): their tile
   * shows the initials and says why, instead of a frozen picture.
   */
  setVideoPaused(pid, paused) {
    if (paused) this.pausedVideo.add(pid);
    else this.pausedVideo.delete(pid);
    const tile = this.tiles.get(pid);
    if (tile) this._label(tile);
  }

  relabel() {
    for (const tile of this.tiles.values()) this._label(tile);
  }

  remoteCount() {
    return [...this.tiles.keys()].filter((pid) => pid !== this.selfId).length;
  }

  // --- internals -------------------------------------------------------------------

  _ensure(participant, isSelf) {
    let tile = this.tiles.get(participant.id);
    if (!tile) {
      const el = this.template.content.firstElementChild.cloneNode(true);
      const video = el.querySelector("video");
      el.dataset.participant = participant.id;
      if (isSelf) {
        el.classList.add("self");
        video.dataset.testid = "local-video";
        video.muted = true;
      } else {
        video.dataset.testid = "remote-video";
        video.dataset.participant = participant.id;
        // Before any sound plays, so nothing comes out of the wrong speaker first.
        if (this.output) routeOutput(video, this.output);
      }
      tile = { el, video, participant, isSelf };
      this.tiles.set(participant.id, tile);
      video.addEventListener("resize", () => this._updateVideoPresence(tile));
      video.addEventListener("loadeddata", () => this._updateVideoPresence(tile));
      if (isSelf) this.list.prepend(el);
      else this.list.append(el);
      if (!isSelf) {
        this._attach(tile);
        if (this._tileSize) this._tileSize.observe(el);
        if (this._tileSeen) this._tileSeen.observe(el);
      }
      this._layout();
    }
    const wasSharing = Boolean(tile.participant.sharing);
    tile.participant = participant;
    if (Boolean(participant.sharing) !== wasSharing) this._layout();
    tile.el.classList.toggle("hand-up", Boolean(participant.hand));
    tile.el.dataset.role = participant.role;
    tile.video.dataset.role = participant.role;
    const muted = participant.muted || {};
    const selfMuted = participant.self_muted || {};
    // Muted by the moderator or by themselves: everyone sees the icon.
    if (!isSelf) tile.el.classList.toggle("mic-muted", Boolean(muted.audio || selfMuted.audio));
    tile.el.classList.toggle("reconnecting", participant.connection === "reconnecting");
    tile.el.dataset.quality = participant.quality || "good";
    this._label(tile);
    return tile;
  }

  _label(tile) {
    const p = tile.participant;
    const name = p.name || "?";
    tile.el.querySelector(".tile-name").textContent = tile.isSelf ? `${name} (${t("call.you")})` : name;
    // Hybrid appointment: the client sits beside the caseworker, on their picture.
    const role = p.client_present ? t("role.caseworkerOnSite") : roleLabel(p.role);
    tile.el.querySelector(".tile-role").textContent = p.org ? `${role} · ${p.org}` : role;
    tile.el.querySelector(".tile-avatar").textContent = initials(name);
    const mutedIcon = tile.el.querySelector(".tile-muted");
    mutedIcon.setAttribute("aria-label", t("call.micMuted"));
    tile.el.querySelector(".tile-hand").setAttribute("aria-label", t("hand.raised"));
    // The connection as the server sees it: reconnecting, or a weak link.
    let state = tile.el.querySelector(".tile-state");
    if (!state) {
      state = document.createElement("span");
      state.className = "tile-state";
      state.dataset.testid = "tile-state";
      tile.el.append(state);
    }
    const reconnecting = p.connection === "reconnecting";
    state.dataset.state = reconnecting ? "reconnecting" : p.quality === "poor" ? "poor" : "good";
    state.textContent = reconnecting
      ? t("call.reconnecting")
      : p.quality === "poor"
        ? t("call.qualityPoor")
        : "";
    state.hidden = !state.textContent;
    const paused = !tile.isSelf && this.pausedVideo.has(p.id);
    tile.el.classList.toggle("video-paused", paused);
    let note = tile.el.querySelector(".tile-paused");
    if (!note) {
      note = document.createElement("p");
      note.className = "tile-paused";
      note.dataset.testid = "tile-paused";
      note.setAttribute("role", "status");
      // In the name label (style.css): the two can then never cover each other.
      tile.el.querySelector(".tile-label").append(note);
    }
    note.textContent = paused ? t("call.videoPaused") : "";
    note.hidden = !paused;
    tile.video.setAttribute("aria-label", `${name}, ${role}`);
  }

  _attach(tile) {
    const stream = this.streams.get(tile.participant.id) || null;
    if (tile.video.srcObject === stream) return;
    tile.video.srcObject = stream;
    tile.video.muted = Boolean(this.speakerOff);
    this._updateVideoPresence(tile);
    if (!stream) return;
    if (this.hooks.onFirstFrame && "requestVideoFrameCallback" in tile.video) {
      tile.video.requestVideoFrameCallback(() => this.hooks.onFirstFrame(tile.participant.id));
    }
    tile.video.play().catch((err) => {
      if (err.name !== "NotAllowedError") return;
      // Autoplay with sound refused (no user gesture): play muted, offer a button.
      tile.video.muted = true;
      tile.video.play().catch(() => {});
      if (this.hooks.onAutoplayBlocked) this.hooks.onAutoplayBlocked();
    });
  }

  _updateVideoPresence(tile) {
    const stream = tile.video.srcObject;
    const hasVideo =
      stream instanceof MediaStream &&
      stream.getVideoTracks().some((tr) => tr.readyState === "live" && tr.enabled);
    tile.el.classList.toggle("no-video", !hasVideo);
  }

  /**
   * Who gets the big tiles when not everyone fits as large as a grid would make them: a
   * shared screen alone; else the person this page is mostly talking to (the caseworker,
   * or for the caseworker the client) and, beside them, whoever spoke last. Never
   * ourselves.
   */
  _featured() {
    const others = [...this.tiles.entries()].filter(([pid]) => pid !== this.selfId);
    // `sharing` comes from the roster: the page of whoever shares says so (screen.share).
    const screen = others.find(([, tile]) => tile.participant.sharing);
    if (screen) return { pids: [screen[0]], reason: "screen" };
    const self = this.tiles.get(this.selfId);
    if (self && self.el.classList.contains("sharing")) return { pids: [this.selfId], reason: "screen" };
    const main = this._mainPid();
    const pids = main ? [main] : [];
    if (this.speaker && this.speaker !== pids[0] && this.tiles.has(this.speaker)) pids.push(this.speaker);
    return { pids, reason: "people" };
  }

  /** The person this page mostly talks to: the caseworker, or for the caseworker the client. */
  _mainPid() {
    const others = [...this.tiles.entries()].filter(([pid]) => pid !== this.selfId);
    const self = this.tiles.get(this.selfId);
    const selfRole = self ? self.participant.role : null;
    const mainRole = selfRole === "caseworker" ? "client" : "caseworker";
    const main = others.find(([, tile]) => tile.participant.role === mainRole) || others[0];
    return main ? main[0] : null;
  }

  _layout() {
    this._viewChanged();
    const n = this.tiles.size;
    this.list.dataset.count = String(n);
    if (n === 0) return;
    const width0 = this.list.clientWidth;
    // A screen share always, and on a phone from three people on: the big tiles on top,
    // the rest in a strip below, so that everyone stays visible without scrolling.
    const featured = n >= 2 ? this._featured() : null;
    const phone = width0 > 0 && width0 < 600;
    const focus = featured && featured.pids.length > 0 && (featured.reason === "screen" || (phone && n >= 3));
    this.list.dataset.layout = focus ? "focus" : "grid";
    const big = focus ? new Set(featured.pids) : new Set();
    this.list.dataset.featured = String(big.size);
    for (const [pid, tile] of this.tiles) tile.el.classList.toggle("featured", big.has(pid));
    if (focus) {
      // Two big tiles share the top row (two columns each); the strip has four columns on
      // a phone, up to six on a desktop.
      const rest = n - big.size;
      let cols = big.size === 2 ? 4 : Math.max(1, Math.min(rest, phone ? 4 : 6));
      // The strip takes at most STRIP_SHARE of the height (a phone with its side panel
      // open leaves the stage short): narrower strip tiles rather than a squashed big one.
      // Only the list's own size decides, never the tiles', so this cannot feed back.
      const gap = 12;
      const stripH = (c) => ((width0 - gap * (c - 1)) / c) * 0.75;
      const height0 = this.list.clientHeight;
      while (big.size === 1 && height0 > 0 && cols < MAX_STRIP_COLS && stripH(cols) > height0 * STRIP_SHARE) cols++;
      this.list.style.setProperty("--strip-cols", String(cols));
      return;
    }
    // Pick the column count that makes 4:3 tiles largest in the space available.
    const gap = 12;
    const width = this.list.clientWidth;
    const height = this.list.clientHeight;
    if (!width || !height) return;
    let best = { cols: 1, tileW: 0 };
    for (let cols = 1; cols <= n; cols++) {
      const rows = Math.ceil(n / cols);
      const byWidth = (width - gap * (cols - 1)) / cols;
      const byHeight = ((height - gap * (rows - 1)) / rows) * (4 / 3);
      const tileW = Math.min(byWidth, byHeight);
      if (tileW > best.tileW) best = { cols, tileW };
    }
    // Never smaller than a readable tile: below that the stage scrolls instead.
    const tileW = Math.max(Math.floor(best.tileW), Math.min(width, 220));
    this.list.style.setProperty("--gap", `${gap}px`);
    this.list.style.setProperty("--cols", String(best.cols));
    this.list.style.setProperty("--tile-w", `${tileW}px`);
  }
}
