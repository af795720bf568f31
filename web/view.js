// The `view` report (docs/protocol.md): what this page shows of each remote participant.
// The SFU turns it into a layer per tile (sfu/forwarder.py Leg.preferred_layer) and the
// allocator into a price; every report that changes the layer costs a key frame and may
// move the allocation. So a report goes out only when it would change what the SFU does,
// and never for a flicker: a tile becoming larger or smaller must clearly cross a layer's
// size (hysteresis), a tile going hidden must stay hidden a while, and the page sends at
// most one report per COALESCE_MS (ui.js collects the changes of one layout).

// The layers every page's camera sends (web/call.js SIMULCAST: 832×624 scaled by 4, 2, 1).
export const LAYER_SIZES = [
  [208, 156],
  [416, 312],
  [832, 624],
];
const TILE_SLACK = 0.8; // sfu.forwarder.TILE_SLACK: a layer covers a tile 25 % larger
const HYSTERESIS = 1.15; // a size must cross a layer's edge by this much to move the layer
export const HIDE_AFTER_MS = 1000; // hidden this long before the SFU is told
export const COALESCE_MS = 500;

/** The layer the SFU picks for a tile (its rule), with the tile scaled by `scale`. */
function layerFor(width, height, scale = 1) {
  if (width === 0 && height === 0) return LAYER_SIZES.length - 1; // unknown: the top
  const w = width * TILE_SLACK * scale;
  const h = height * TILE_SLACK * scale;
  const i = LAYER_SIZES.findIndex(([lw, lh]) => lw >= w && lh >= h);
  return i === -1 ? LAYER_SIZES.length - 1 : i;
}

export class ViewReport {
  /**
   * @param {(tiles: object[]) => boolean} send sends a report; false if it could not
   *   (not connected), so the next update tries again
   * @param {() => number} now milliseconds (performance.now)
   */
  constructor(send, now = () => performance.now()) {
    this._send = send;
    this._now = now;
    this.sent = new Map(); // pid -> the tile as last reported
    this._hiddenSince = new Map(); // pid -> when its tile went hidden (not reported yet)
    this._latest = [];
    this._timer = null;
  }

  /** Forget what was reported (a new connection: the server knows nothing yet). */
  reset() {
    this.sent.clear();
    this._hiddenSince.clear();
  }

  /** The page's tiles now ([{participant, visible, width, height}]); sends if it matters. */
  update(tiles) {
    this._latest = tiles;
    const now = this._now();
    let changed = false;
    let recheck = Infinity;
    const report = tiles.map((tile) => {
      const before = this.sent.get(tile.participant);
      if (!tile.visible) {
        if (before && before.visible) {
          const since = this._hiddenSince.get(tile.participant) ?? now;
          this._hiddenSince.set(tile.participant, since);
          if (now - since < HIDE_AFTER_MS) {
            recheck = Math.min(recheck, since + HIDE_AFTER_MS - now);
            return before; // a flicker, until it lasts
          }
        }
        this._hiddenSince.delete(tile.participant);
        if (!before || before.visible) changed = true;
        return tile;
      }
      this._hiddenSince.delete(tile.participant);
      if (!before || !before.visible) {
        changed = true;
        return tile;
      }
      const was = layerFor(before.width, before.height);
      const up = layerFor(tile.width, tile.height, 1 / HYSTERESIS);
      const down = layerFor(tile.width, tile.height, HYSTERESIS);
      if (up > was || down < was) {
        changed = true;
        return tile;
      }
      return before; // the same layer: the SFU keeps the size it knows
    });
    // Someone gone from the page: the server drops them itself (roster), no report.
    if (changed && this._send(report)) {
      this.sent = new Map(report.map((tile) => [tile.participant, tile]));
    }
    clearTimeout(this._timer);
    this._timer = null;
    if (recheck !== Infinity) {
      this._timer = setTimeout(() => this.update(this._latest), recheck + 10);
    }
  }
}
