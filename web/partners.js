// The partner directory in the dial-in form: the organisation field is a combobox whose
// list offers the operator's partner organisations as the caseworker types (ARIA 1.2
// combobox with a listbox popup and aria-activedescendant: focus stays in the field).
// Picking one fills in type, contact person, e-mail, rights and validity, so dialling a
// regular partner in is two clicks: pick, then "Einladung erstellen".
// Read from GET /api/rooms/{room}/partners with the caseworker's token (docs/protocol.md,
// "Partner directory (REST)"); without a directory the field is a plain text field.

import { t } from "./i18n.js";

const $ = (id) => document.getElementById(id);
// Few enough that the list never needs its own scrollbar (a scrollable region that the
// keyboard cannot reach is an accessibility failure); typing narrows it further.
const MAX_SHOWN = 6;

/** Lower case without accents: "koln" finds "Köln", "drv" finds "DRV Bund". */
function fold(text) {
  return text.normalize("NFD").replace(/\p{M}/gu, "").toLowerCase().trim();
}

export class PartnerSuggest {
  constructor({ token, roomId }) {
    this.token = token;
    this.roomId = roomId;
    this.partners = [];
    this.shown = [];
    this.active = -1;
    this.filled = { name: "", email: "" }; // what a pick wrote, so a later pick may replace it
    this.input = $("invite-organisation");
    this.list = $("invite-partner-list");
    this.status = $("invite-partner-status");
    this.input.addEventListener("input", () => this._update(false));
    this.input.addEventListener("keydown", (ev) => this._key(ev));
    this.input.addEventListener("blur", () => this._close());
    // Keep focus in the field while the pointer picks (no blur closing the list first).
    this.list.addEventListener("mousedown", (ev) => ev.preventDefault());
    this.list.addEventListener("click", (ev) => {
      const option = ev.target.closest('[role="option"]');
      if (option) this._pick(Number(option.dataset.index));
    });
  }

  /** A fresh form: nothing offered, nothing filled, the directory read anew. */
  reset() {
    this._close();
    this.filled = { name: "", email: "" };
    this.status.textContent = "";
    this._load();
  }

  async _load() {
    try {
      const resp = await fetch(`/api/rooms/${encodeURIComponent(this.roomId)}/partners`, {
        headers: { Authorization: `Bearer ${this.token}` },
        cache: "no-store",
      });
      const data = resp.ok ? await resp.json() : {};
      this.partners = Array.isArray(data.partners) ? data.partners : [];
    } catch {
      this.partners = []; // the form still works by hand
    }
    const any = this.partners.length > 0;
    $("invite-partner-hint").hidden = !any;
    if (any) this.input.setAttribute("aria-describedby", "invite-partner-hint");
    else this.input.removeAttribute("aria-describedby");
    // Typed while the directory was on its way: offer now.
    if (any && document.activeElement === this.input && this.input.value.trim()) this._update(false);
  }

  _matches(query) {
    const q = fold(query);
    const starts = [];
    const inside = [];
    for (const p of this.partners) {
      const name = fold(p.name);
      if (!q || name.startsWith(q) || name.split(/\s+/).some((w) => w.startsWith(q))) starts.push(p);
      else if (name.includes(q)) inside.push(p);
    }
    return [...starts, ...inside].slice(0, MAX_SHOWN);
  }

  /** Offer what fits the field; `all`: also for an empty field (arrow down). */
  _update(all) {
    const query = this.input.value;
    if (!this.partners.length || (!query.trim() && !all)) {
      this._close();
      return;
    }
    this.shown = this._matches(query);
    // The exact name already in the field: nothing left to offer.
    if (this.shown.length === 1 && fold(this.shown[0].name) === fold(query)) this.shown = [];
    if (!this.shown.length) {
      this._close();
      return;
    }
    this.active = -1;
    this.list.replaceChildren(
      ...this.shown.map((p, i) => {
        const li = document.createElement("li");
        li.id = `invite-partner-${i}`;
        li.setAttribute("role", "option");
        li.setAttribute("aria-selected", "false");
        li.dataset.index = String(i);
        li.dataset.testid = "partner-option";
        li.dataset.partner = p.id;
        const name = document.createElement("span");
        name.className = "partner-name";
        name.textContent = p.name;
        const kind = document.createElement("span");
        kind.className = "partner-type";
        kind.textContent = t(`org.${p.type}`);
        li.append(name, kind);
        return li;
      }),
    );
    this.list.hidden = false;
    this.input.setAttribute("aria-expanded", "true");
    this.input.removeAttribute("aria-activedescendant");
    const count = this.shown.length;
    this.status.textContent = count === 1 ? t("partners.count.one") : t("partners.count.many", { count });
  }

  _close() {
    if (this.list.hidden) return;
    this.list.hidden = true;
    this.list.replaceChildren();
    this.shown = [];
    this.active = -1;
    this.input.setAttribute("aria-expanded", "false");
    this.input.removeAttribute("aria-activedescendant");
  }

  _move(step) {
    if (this.list.hidden) this._update(true);
    if (!this.shown.length) return;
    const n = this.shown.length;
    this.active = this.active < 0 ? (step > 0 ? 0 : n - 1) : (this.active + step + n) % n;
    for (const li of this.list.children) {
      li.setAttribute("aria-selected", String(Number(li.dataset.index) === this.active));
    }
    const option = this.list.children[this.active];
    this.input.setAttribute("aria-activedescendant", option.id);
    option.scrollIntoView({ block: "nearest" });
  }

  _key(ev) {
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      if (!this.partners.length) return;
      ev.preventDefault();
      this._move(ev.key === "ArrowDown" ? 1 : -1);
    } else if (ev.key === "Enter" && !this.list.hidden && this.active >= 0) {
      ev.preventDefault(); // take the suggestion, do not send the form yet
      this._pick(this.active);
    } else if (ev.key === "Escape" && !this.list.hidden) {
      // Close the list only; a second Escape closes the dialog as usual.
      ev.preventDefault();
      ev.stopPropagation();
      this._close();
    } else if (ev.key === "Tab") {
      this._close();
    }
  }

  _pick(index) {
    const p = this.shown[index];
    if (!p) return;
    this._close();
    this.input.value = p.name;
    const type = $("invite-type");
    if ([...type.options].some((o) => o.value === p.type)) type.value = p.type;
    // The person and the address: the directory's, unless the caseworker typed their own.
    const name = $("invite-name");
    if (!name.value.trim() || name.value === this.filled.name) {
      name.value = p.contact || p.name;
      this.filled.name = name.value;
    }
    const email = $("invite-email");
    if (!email.value.trim() || email.value === this.filled.email) {
      email.value = p.email || "";
      this.filled.email = email.value;
    }
    const rights = new Set(p.rights || []);
    for (const box of document.querySelectorAll('#invite-form input[name="rights"]')) {
      box.checked = rights.has(box.value);
    }
    const minutes = $("invite-minutes");
    const max = Number(minutes.max) || 240;
    minutes.value = String(Math.min(Math.max(1, Number(p.valid_minutes) || 30), max));
    this.status.textContent = t("partners.filled", { name: p.name });
    this.input.focus();
  }
}
