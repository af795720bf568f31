// The chat of the call: text only, passed on by the server to the people in the call and
// kept nowhere (the page says so). Messages are put on the page with textContent only,
// never as HTML, so whatever someone types shows as the text they typed.

import { errorMessage, roleLabel, t } from "./i18n.js";

const $ = (id) => document.getElementById(id);
export const MAX_CHAT_CHARS = 1000;

export class ChatPanel {
  /**
   * @param {{call: import("./call.js").Call, moderator: boolean, onAnnounce: Function,
   *          onToggle: Function}} opts
   */
  constructor({ call, moderator, onAnnounce, onToggle }) {
    this.call = call;
    this.moderator = moderator;
    this.onAnnounce = onAnnounce;
    this.onToggle = onToggle;
    this.selfId = null;
    this.pending = null; // the text of a send not yet confirmed
    this.enabled = true;
    this.unread = 0;
    this.el = $("chat-panel");
    this.button = $("chat-toggle");
    this.button.hidden = false;
    this.button.onclick = () => this.setOpen(this.el.hidden);
    $("chat-form").onsubmit = (ev) => {
      ev.preventDefault();
      this._send();
    };
    $("chat-input").onkeydown = (ev) => {
      // Enter sends, Shift+Enter starts a new line (as in every messenger).
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        this._send();
      }
    };
    $("chat-input").maxLength = MAX_CHAT_CHARS;
    $("chat-allow-row").hidden = !moderator;
    $("chat-allow").onchange = (ev) => this._setEnabled(ev.target.checked);
    call.addEventListener("chat-message", ({ detail }) => this._receive(detail));
    call.addEventListener("chat-state", ({ detail }) => this.setEnabled(detail.enabled !== false, true));
    this._sync();
  }

  setSelf(id) {
    this.selfId = id;
  }

  get open() {
    return !this.el.hidden;
  }

  setOpen(open) {
    this.el.hidden = !open;
    if (open) {
      this.unread = 0;
      this._scrollToEnd();
      $("chat-input").focus();
    }
    this._sync();
    if (this.onToggle) this.onToggle(open);
  }

  /** The room's chat switch (from `welcome` and `chat.state`). */
  setEnabled(enabled, announce = false) {
    const changed = this.enabled !== enabled;
    this.enabled = enabled;
    $("chat-allow").checked = enabled;
    $("chat-input").disabled = !enabled;
    $("chat-send").disabled = !enabled;
    $("chat-off").hidden = enabled;
    if (changed && announce) this.onAnnounce(t(enabled ? "chat.turnedOn" : "chat.turnedOff"));
  }

  relabel() {
    for (const li of $("chat-log").children) this._fillHead(li, li._message);
    this._sync();
  }

  // --- internals -------------------------------------------------------------------

  async _send() {
    const input = $("chat-input");
    const text = input.value.trim();
    if (!text || !this.enabled) return;
    const error = $("chat-error");
    error.hidden = true;
    this.pending = text;
    try {
      await this.call.request("chat.send", { text });
      this._sent(text);
    } catch (err) {
      // Our own message may be back already while the answer was lost or late (a slow
      // link): then it was sent, and saying "no answer" would only invite a duplicate.
      if (this.pending === text) {
        error.textContent = errorMessage(err.code || "unknown", err.message);
        error.hidden = false;
      }
    }
    input.focus();
  }

  /** `text` went out: empty the input (unless something new was typed meanwhile). */
  _sent(text) {
    if (this.pending !== text) return;
    this.pending = null;
    const input = $("chat-input");
    if (input.value.trim() === text) input.value = "";
    $("chat-error").hidden = true;
  }

  async _setEnabled(enabled) {
    try {
      await this.call.request("chat.enable", { enabled });
    } catch (err) {
      $("chat-allow").checked = this.enabled;
      const error = $("chat-error");
      error.textContent = errorMessage(err.code || "unknown", err.message);
      error.hidden = false;
    }
  }

  _receive(msg) {
    if (!msg || typeof msg.text !== "string") return;
    const mine = msg.from === this.selfId;
    const li = document.createElement("li");
    li.className = mine ? "chat-message mine" : "chat-message";
    li.dataset.testid = "chat-message";
    li.dataset.from = String(msg.from || "");
    li._message = msg;
    const head = document.createElement("p");
    head.className = "chat-head";
    const body = document.createElement("p");
    body.className = "chat-text";
    body.textContent = msg.text; // never innerHTML: a "<script>" is shown, not run
    li.append(head, body);
    this._fillHead(li, msg);
    $("chat-log").append(li);
    this._scrollToEnd();
    if (mine) {
      this._sent(msg.text);
      return;
    }
    if (!this.open) {
      this.unread += 1;
      this._sync();
      // The log itself is announced while it is visible; closed, the page says it.
      this.onAnnounce(t("chat.from", { name: msg.name || "?", text: msg.text }));
    }
  }

  _fillHead(li, msg) {
    const head = li.querySelector(".chat-head");
    const mine = msg.from === this.selfId;
    const who = mine ? t("call.you") : msg.name || "?";
    const when = new Date(msg.at || Date.now()).toLocaleTimeString(document.documentElement.lang, {
      hour: "2-digit",
      minute: "2-digit",
    });
    head.textContent = mine ? `${who} · ${when}` : `${who} (${roleLabel(msg.role)}) · ${when}`;
  }

  _scrollToEnd() {
    const log = $("chat-log-region");
    log.scrollTop = log.scrollHeight;
  }

  _sync() {
    const open = this.open;
    this.button.setAttribute("aria-expanded", String(open));
    const badge = $("chat-unread");
    badge.hidden = this.unread === 0;
    badge.textContent = String(this.unread);
    this.button.setAttribute(
      "aria-label",
      this.unread ? t("chat.buttonUnread", { count: this.unread }) : t("chat.title"),
    );
  }
}
