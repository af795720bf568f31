// The side panel (participants, waiting room, lock) and the caseworker's dialogs (dial in a
// partner, end for all). Buttons only ask; the server checks the `moderate` and `invite`
// grants on every action (docs/protocol.md, "Counselling flows").

import { routeOutput } from "./devices.js";
import { errorMessage, roleLabel, t } from "./i18n.js";
import { PartnerSuggest } from "./partners.js";

const $ = (id) => document.getElementById(id);

function who(p) {
  const role = p.client_present ? t("role.caseworkerOnSite") : roleLabel(p.role);
  return p.org ? `${role} · ${p.org}` : role;
}

function button(label, aria, testid, onClick, cls = "btn btn-small btn-secondary") {
  const b = document.createElement("button");
  b.type = "button";
  b.className = cls;
  b.textContent = label;
  b.setAttribute("aria-label", aria);
  b.dataset.testid = testid;
  b.addEventListener("click", onClick);
  return b;
}

/**
 * Re-render `list` without losing keyboard focus on one of its buttons. When the row that
 * had focus is gone (admitted, declined, removed), focus moves to the same button of the
 * next row, else to `fallback`, so a keyboard or screen-reader user is never dropped to
 * the top of the page.
 */
function keepFocus(list, render, fallback) {
  const active = document.activeElement;
  const had = active && list.contains(active);
  const testid = had ? active.dataset.testid : null;
  const rows = had ? [...list.querySelectorAll(`[data-testid="${testid}"]`)] : [];
  const index = rows.indexOf(active);
  const key = had ? `[data-testid="${testid}"][data-participant="${active.dataset.participant}"]` : null;
  render();
  if (!had) return;
  // The same button, else another button of the same person's row (Mute → Remove).
  const row = list.querySelector(`li[data-participant="${active.dataset.participant}"]`);
  const again = list.querySelector(key) || (row && row.querySelector("button"));
  if (again) {
    again.focus();
    return;
  }
  const next = [...list.querySelectorAll(`[data-testid="${testid}"]`)];
  const target = next[Math.min(index, next.length - 1)] || fallback;
  if (target) target.focus();
}

/** A heading that focus may be moved to (not in the Tab order). */
function focusable(el) {
  el.tabIndex = -1;
  return el;
}

/**
 * Someone waiting must not be missed by a caseworker busy in another window: a short
 * sound (a local file), the count in the tab title, and a desktop notification once the
 * caseworker has allowed them (the button asks; the browser remembers).
 */
class LobbyAlert {
  constructor() {
    this.title = document.title;
    this.sound = new Audio("/static/sounds/lobby.wav");
    this.sound.preload = "auto";
  }

  arrived(people) {
    this.sound.currentTime = 0;
    this.sound.play().catch(() => {}); // no sound before a click on the page: title and list still tell
    if ("Notification" in window && Notification.permission === "granted") {
      const names = people.map((p) => p.name).join(", ");
      try {
        const note = new Notification(t("lobby.notifyTitle"), {
          body: t("lobby.notifyBody", { name: names }),
          tag: "roundtable-lobby",
          icon: "/static/favicon.svg",
        });
        note.onclick = () => {
          window.focus();
          note.close();
        };
      } catch {
        // some browsers allow notifications only from a service worker: title and sound remain
      }
    }
  }

  count(n) {
    document.title = n > 0 ? `(${n}) ${t("lobby.titleWaiting")} – ${this.title}` : this.title;
  }

  async askPermission() {
    try {
      await Notification.requestPermission();
    } catch {
      // old callback-style API or blocked: nothing to do
    }
    this.syncButton();
  }

  syncButton() {
    const button = $("notify-toggle");
    if (!("Notification" in window)) return;
    const state = Notification.permission;
    button.disabled = state !== "default";
    button.textContent = t(state === "granted" ? "lobby.notifyOn" : state === "denied" ? "lobby.notifyDenied" : "lobby.notifyAsk");
  }
}

export class Panel {
  /**
   * @param {{call: import("./call.js").Call, moderator: boolean, onStatus: Function,
   *          onError: Function}} opts
   */
  constructor({ call, moderator, onStatus, onError, onToggle }) {
    this.call = call;
    this.onToggle = onToggle;
    this.moderator = moderator;
    this.onStatus = onStatus;
    this.onError = onError;
    this.people = [];
    this.waiting = [];
    this.selfId = null;
    this.el = $("panel");
    this.toggleButton = $("panel-toggle");
    $("lobby-section").hidden = !moderator;
    $("room-section").hidden = !moderator;
    this.toggleButton.onclick = () => this.setOpen(this.el.hidden);
    this.alert = new LobbyAlert();
    $("notify-row").hidden = !moderator || !("Notification" in window);
    $("notify-toggle").onclick = () => this.alert.askPermission();
    this.alert.syncButton();
    $("lock-toggle").onchange = (ev) => this._act("room.lock", { locked: ev.target.checked });
    this._renderLobby();
    this._syncToggle();
  }

  setOpen(open) {
    this.el.hidden = !open;
    this._syncToggle();
    if (this.onToggle) this.onToggle(open);
  }

  setRoster(participants, selfId) {
    this.selfId = selfId;
    const before = new Set(this.people.filter((p) => p.hand).map((p) => p.id));
    this.people = participants.filter((p) => p.state === "admitted" || p.state === "connected");
    // Raised hands first, in the order they went up; then everyone else as they came.
    const hands = this.people.filter((p) => p.hand).sort((a, b) => a.hand - b.hand);
    this.handOrder = new Map(hands.map((p, i) => [p.id, i + 1]));
    this.people = [...hands, ...this.people.filter((p) => !p.hand)];
    if (this.moderator) {
      for (const p of hands) if (!before.has(p.id)) this.onStatus("hand.someoneRaised", { name: p.name });
    }
    this._renderPeople();
  }

  setLobby(waiting) {
    const before = new Set(this.waiting.map((p) => p.id));
    this.waiting = waiting;
    const arrived = waiting.filter((p) => !before.has(p.id));
    for (const p of arrived) this.onStatus("status.someoneWaiting", { name: p.name });
    if (this.moderator) {
      if (arrived.length > 0) this.alert.arrived(arrived);
      this.alert.count(waiting.length);
    }
    // Someone waiting is the one thing a caseworker must not miss: show the panel.
    if (waiting.length > 0) this.setOpen(true);
    this._renderLobby();
    this._syncToggle();
  }

  /** The lobby sound comes out of the speaker chosen for the call. */
  setOutput(deviceId) {
    return routeOutput(this.alert.sound, deviceId);
  }

  setLocked(locked) {
    $("lock-toggle").checked = Boolean(locked);
  }

  relabel() {
    this._renderPeople();
    this._renderLobby();
    this._syncToggle();
    this.alert.syncButton();
    this.alert.count(this.waiting.length);
  }

  // --- internals -------------------------------------------------------------------

  _syncToggle() {
    const open = !this.el.hidden;
    // The visible text names the button; aria-expanded tells whether the list is open.
    this.toggleButton.setAttribute("aria-expanded", String(open));
    const badge = $("lobby-count");
    badge.hidden = !this.moderator || this.waiting.length === 0;
    badge.textContent = String(this.waiting.length);
  }

  _row(p) {
    const li = $("person-template").content.firstElementChild.cloneNode(true);
    li.dataset.participant = p.id;
    li.dataset.role = p.role;
    li.querySelector(".person-name").textContent =
      p.id === this.selfId ? `${p.name} (${t("call.you")})` : p.name;
    li.querySelector(".person-role").textContent = who(p);
    return li;
  }

  _renderPeople() {
    const list = $("people-list");
    keepFocus(list, () => this._fillPeople(list), focusable($("people-title")));
  }

  _fillPeople(list) {
    list.replaceChildren(
      ...this.people.map((p) => {
        const li = this._row(p);
        const actions = li.querySelector(".person-actions");
        const order = this.handOrder && this.handOrder.get(p.id);
        if (order) {
          const hand = document.createElement("span");
          hand.className = "person-hand";
          hand.dataset.testid = "person-hand";
          hand.textContent = t("hand.order", { n: order });
          actions.append(hand);
        }
        const muted = p.muted && p.muted.audio;
        if (muted) {
          const note = document.createElement("span");
          note.className = "person-note";
          note.textContent = t("mod.mutedNote");
          actions.append(note);
        }
        if (this.moderator && p.id !== this.selfId) {
          if (!muted) {
            const mute = button(t("mod.mute"), t("mod.muteLabel", { name: p.name }), "mute-participant", () =>
              this._act("moderate.mute", { participant: p.id, kind: "audio" }),
            );
            mute.dataset.participant = p.id;
            actions.append(mute);
          }
          const remove = button(
            t("mod.remove"),
            t("mod.removeLabel", { name: p.name }),
            "remove-participant",
            () => this._act("moderate.remove", { participant: p.id }),
            "btn btn-small btn-danger-outline",
          );
          remove.dataset.participant = p.id;
          actions.append(remove);
        }
        return li;
      }),
    );
  }

  _renderLobby() {
    const none = !this.moderator || this.waiting.length === 0;
    const list = $("lobby-list");
    $("lobby-section").hidden = none;
    keepFocus(list, () => this._fillLobby(list, "lobby-entry"), focusable($("people-title")));
    // The invite dialog is modal (the panel behind it is inert): whoever arrives while it
    // is open can be let in from the dialog, without having to close it first.
    const inDialog = $("invite-lobby-list");
    const wasHidden = $("invite-lobby").hidden;
    $("invite-lobby").hidden = none;
    keepFocus(inDialog, () => this._fillLobby(inDialog, "invite-lobby-entry"), $("invite-result").hidden ? $("invite-organisation") : $("invite-link"));
    if (wasHidden && !none && $("invite-dialog").open) {
      $("invite-lobby").scrollIntoView({ block: "nearest" });
    }
  }

  _fillLobby(list, testid) {
    list.replaceChildren(
      ...this.waiting.map((p) => {
        const li = this._row(p);
        li.dataset.testid = testid;
        const actions = li.querySelector(".person-actions");
        const admit = button(t("lobby.admit"), t("lobby.admitLabel", { name: p.name }), "admit", () =>
          this._act("lobby.admit", { participant: p.id }),
          "btn btn-small btn-primary",
        );
        const deny = button(t("lobby.deny"), t("lobby.denyLabel", { name: p.name }), "deny", () =>
          this._act("lobby.deny", { participant: p.id }),
        );
        admit.dataset.participant = deny.dataset.participant = p.id;
        actions.append(admit, deny);
        return li;
      }),
    );
  }

  async _act(event, payload) {
    try {
      await this.call.request(event, payload);
    } catch (err) {
      this.onError(err.code || "unknown", err.message);
    }
  }
}

/** "Partner hinzuschalten": the invite form, POST /api/rooms/{room}/invites, the link. */
export class InviteDialog {
  constructor({ token, roomId }) {
    this.token = token;
    this.roomId = roomId;
    this.inviteId = null;
    this.outcomes = new Map(); // invite id -> webhook outcome
    this.dialog = $("invite-dialog");
    this.form = $("invite-form");
    this.form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this._submit();
    });
    $("invite-cancel").onclick = () => this.dialog.close();
    $("invite-done").onclick = () => this.dialog.close();
    $("invite-copy").onclick = () => this._copy();
    this.partners = new PartnerSuggest({ token, roomId });
  }

  open() {
    this.form.reset();
    this.partners.reset();
    this.form.hidden = false;
    $("invite-result").hidden = true;
    $("invite-error").hidden = true;
    this.dialog.showModal();
    $("invite-organisation").focus();
  }

  /**
   * Webhook outcome for an invite (event `invite.delivery`). It can arrive before the
   * POST's own answer, so outcomes are kept by invite id.
   */
  delivery(msg) {
    if (!msg || !msg.id) return;
    this.outcomes.set(msg.id, msg.status);
    if (msg.id === this.inviteId) $("invite-delivery").textContent = t(`invite.delivery.${msg.status}`);
  }

  async _submit() {
    const organisation = $("invite-organisation").value.trim();
    const name = $("invite-name").value.trim();
    const error = $("invite-error");
    if (!organisation || !name) {
      error.textContent = t("invite.required");
      error.hidden = false;
      (organisation ? $("invite-name") : $("invite-organisation")).focus();
      return;
    }
    const minutes = Number.parseInt($("invite-minutes").value, 10);
    const body = {
      organisation_type: $("invite-type").value,
      organisation,
      name,
      rights: [...this.form.querySelectorAll('input[name="rights"]:checked')].map((i) => i.value),
      valid_minutes: Number.isFinite(minutes) ? minutes : 30,
      waiting_room: $("invite-waiting").checked,
    };
    const address = $("invite-email").value.trim();
    if (address) body.email = address;
    this.address = address;
    const submit = $("invite-submit");
    submit.disabled = true;
    try {
      const resp = await fetch(`/api/rooms/${encodeURIComponent(this.roomId)}/invites`, {
        method: "POST",
        headers: { Authorization: `Bearer ${this.token}`, "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      const data = await resp.json().catch(() => ({}));
      if (!resp.ok) {
        error.textContent = errorMessage(data.error, data.message);
        error.hidden = false;
        return;
      }
      this._showResult(data);
    } catch {
      error.textContent = errorMessage("timeout");
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  }

  _showResult(data) {
    this.inviteId = data.id;
    this.form.hidden = true;
    $("invite-result").hidden = false;
    const link = $("invite-link");
    link.value = data.invite_url;
    const expires = new Date(data.expires_at);
    $("invite-link-label").textContent = Number.isNaN(expires.getTime())
      ? ""
      : t("invite.expires", {
          time: expires.toLocaleTimeString(document.documentElement.lang, { hour: "2-digit", minute: "2-digit" }),
        });
    // The mail went out (or not) before this answer: say which, never silently nothing.
    const mailed = $("invite-email-status");
    mailed.textContent = data.email ? t(`invite.email.${data.email}`, { email: this.address }) : "";
    mailed.classList.toggle("alert", data.email === "failed" || data.email === "disabled");
    const outcome = this.outcomes.get(data.id);
    $("invite-delivery").textContent = outcome
      ? t(`invite.delivery.${outcome}`)
      : data.webhook === "queued"
        ? t("invite.delivery.queued")
        : "";
    // Focus the link from its start (a selected textarea would scroll to the token's end).
    link.focus();
    link.setSelectionRange(0, 0);
    link.scrollTop = 0;
  }

  async _copy() {
    const link = $("invite-link");
    try {
      await navigator.clipboard.writeText(link.value);
    } catch {
      link.select();
      document.execCommand("copy");
    }
    // Feedback on the button itself, so the delivery line keeps its news.
    const copy = $("invite-copy");
    copy.textContent = t("invite.copiedShort");
    setTimeout(() => {
      copy.textContent = t("invite.copy");
    }, 2000);
  }
}

/** The client's link as a QR code (GET /api/rooms/{room}/qr), made by our own server. */
export class QrDialog {
  constructor({ token, roomId }) {
    this.token = token;
    this.roomId = roomId;
    this.dialog = $("qr-dialog");
    $("qr-close").onclick = () => this.dialog.close();
  }

  async open() {
    const img = $("qr-image");
    const error = $("qr-error");
    error.hidden = true;
    this.dialog.showModal();
    $("qr-close").focus();
    try {
      const resp = await fetch(`/api/rooms/${encodeURIComponent(this.roomId)}/qr`, {
        headers: { Authorization: `Bearer ${this.token}` },
        cache: "no-store",
      });
      if (!resp.ok) {
        const data = await resp.json().catch(() => ({}));
        throw Object.assign(new Error(data.message || ""), { code: data.error || "unknown" });
      }
      const svg = await resp.text();
      // A data: URL (the page's CSP allows images from data:, not from blob:).
      img.src = `data:image/svg+xml;base64,${btoa(unescape(encodeURIComponent(svg)))}`;
      img.alt = t("qr.alt");
      img.hidden = false;
    } catch (err) {
      img.hidden = true;
      error.textContent = errorMessage(err.code || "timeout", err.message);
      error.hidden = false;
    }
  }
}
