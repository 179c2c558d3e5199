// Reviewing a finished job's buildings on the map: select one, call it correct or wrong,
// redraw its outline, draw what the model missed. Every verdict is saved at once, with the
// review version this viewer last saw, so a second reviewer's work is never overwritten
// in silence (the server answers 409 and we reload what it holds).

import { api } from "./api.js";
import { $, h, showError } from "./ui.js";

const L = window.L;

export const VERDICT_COLOURS = {
  unreviewed: "#ffffff",
  correct: "#22c55e",
  wrong: "#ef4444",
  edited: "#3b82f6",
  added: "#a855f7",
};
const LABELS = { correct: "Correct", wrong: "Wrong", edited: "Edited", added: "Added", unreviewed: "Unreviewed" };
const PRECISION = 8; // decimal degrees kept in a saved outline: about a millimetre

/** How a building looks: its verdict's colour; the selected one thicker and filled. */
export function reviewStyle(verdict, selected = false) {
  const color = VERDICT_COLOURS[verdict || "unreviewed"];
  return {
    color,
    weight: selected ? 4 : 2,
    opacity: 1,
    fillColor: color,
    fillOpacity: selected ? 0.35 : verdict ? 0.2 : 0.05,
    dashArray: verdict === "wrong" ? "5 4" : null,
  };
}

function latLngsOf(geometry) {
  return L.GeoJSON.coordsToLatLngs(geometry.coordinates, geometry.type === "Polygon" ? 1 : 2);
}

/** True when the user is typing, so a letter is text and not a shortcut. */
function typing(target) {
  return Boolean(target?.closest?.("input, textarea, select, [contenteditable='true']"));
}

export class Review {
  constructor(app) {
    this.app = app;
    this.map = app.map;
    this.job = null;
    this.layer = null;
    this.entries = new Map(); // "b<building id>" or "r<review id>" -> entry (see addEntry)
    this.counts = null;
    this.selected = null;
    this.editing = null;
    this.drawing = false;
    this.saving = Promise.resolve();
    this.pending = 0;
    this.note = ""; // what the panel says while no building is selected
    $("#review-correct").addEventListener("click", () => this.judge("correct"));
    $("#review-wrong").addEventListener("click", () => this.judge("wrong"));
    $("#review-edit").addEventListener("click", () => this.toggleEdit());
    $("#review-next").addEventListener("click", () => this.next());
    $("#review-draw").addEventListener("click", () => this.toggleDraw());
    $("#review-close").addEventListener("click", () => this.close());
    document.addEventListener("keydown", (event) => this.onKey(event));
    this.map.on("pm:create", (event) => this.drawn(event.layer));
    this.map.on("pm:drawend", () => {
      if (!this.drawing) return;
      this.drawing = false;
      this.note = "";
      this.renderPanel();
    });
  }

  get active() {
    return this.job !== null;
  }

  /** Enter review mode for a finished job: its buildings become an editable layer. */
  async open(job) {
    if (this.job?.id === job.id) return;
    this.close();
    this.job = job;
    this.loaded = false;
    const section = $("#review");
    section.hidden = false;
    $("#review-h").textContent = `Review · Job ${String(job.id).slice(0, 8)}`;
    showError($("#review-error"), null);
    this.layer = L.featureGroup().addTo(this.map);
    this.app.refreshBuildings(); // the job's vector tiles would draw every outline twice
    this.app.jobs.render();
    this.renderPanel();
    const id = encodeURIComponent(job.id);
    try {
      // the raw buildings, not ?reviewed=true: a building called wrong stays on the map
      // (in red) so a reviewer can change their mind; the reviews say what each became
      const [collection, page] = await Promise.all([api(`jobs/${id}/buildings.geojson`), api(`jobs/${id}/reviews`)]);
      if (this.job?.id !== job.id) return; // left, or another job opened, meanwhile
      for (const feature of collection.features || []) {
        const building = feature.id ?? feature.properties?.id;
        this.addEntry({ key: `b${building}`, building, review: null, original: feature.geometry });
      }
      this.sync(page);
      const bounds = this.layer.getBounds();
      if (bounds.isValid()) this.map.fitBounds(bounds, { maxZoom: 19, animate: false });
    } catch (err) {
      showError($("#review-error"), err);
    }
    this.app.retrain.prepare(job);
    await this.app.compare.prepare(job);
    this.loaded = true;
    section.scrollIntoView({ block: "nearest" });
  }

  close() {
    if (!this.job) return;
    if (this.editing) this.cancelEdit();
    if (this.drawing) this.map.pm.disableDraw();
    this.app.compare.stop();
    this.app.retrain.prepare(null);
    this.layer?.remove();
    this.layer = null;
    this.entries.clear();
    this.job = null;
    this.selected = null;
    this.counts = null;
    this.note = "";
    $("#review").hidden = true;
    this.app.refreshBuildings();
    this.app.jobs.render();
  }

  /** One building on the map: predicted (`building`) or drawn by a reviewer (`review`). */
  addEntry({ key, building, review, original, verdict = null, version = 0 }) {
    const layer = L.polygon(latLngsOf(original), reviewStyle(verdict));
    const entry = { key, building, review, original, shown: original, verdict, version, layer };
    // the click still reaches the map, so a missed building can be drawn over others
    layer.on("click", () => {
      if (!this.map.pm.globalDrawModeEnabled()) this.select(key);
    });
    layer.addTo(this.layer);
    this.entries.set(key, entry);
    this.paint(entry);
    return entry;
  }

  /** Take the server's reviews as the truth: verdicts, versions and outlines. */
  sync(page) {
    this.counts = page.counts;
    const seen = new Set();
    for (const r of page.reviews) {
      if (r.building_id !== null) {
        const entry = this.entries.get(`b${r.building_id}`);
        if (!entry) continue;
        seen.add(entry.key);
        Object.assign(entry, { verdict: r.verdict, version: r.version });
        this.reshape(entry, r.geometry || entry.original);
        continue;
      }
      const key = `r${r.id}`;
      const entry = this.entries.get(key);
      if (r.verdict === "wrong") {
        // a drawn building withdrawn: it is gone, not a mistake of the model's
        if (entry) this.forget(entry);
        continue;
      }
      seen.add(key);
      if (entry) {
        Object.assign(entry, { verdict: r.verdict, version: r.version });
        this.reshape(entry, r.geometry);
      } else {
        this.addEntry({ key, building: null, review: r.id, original: r.geometry, verdict: r.verdict, version: r.version });
      }
    }
    for (const entry of this.entries.values()) {
      if (seen.has(entry.key)) continue;
      if (entry.building === null) this.forget(entry);
      else {
        Object.assign(entry, { verdict: null, version: 0 });
        this.reshape(entry, entry.original);
      }
    }
    for (const entry of this.entries.values()) this.paint(entry);
    this.renderPanel();
  }

  forget(entry) {
    entry.layer.remove();
    this.entries.delete(entry.key);
    if (this.selected === entry.key) this.selected = null;
  }

  reshape(entry, geometry) {
    if (this.editing === entry || JSON.stringify(geometry) === JSON.stringify(entry.shown)) return;
    entry.layer.setLatLngs(latLngsOf(geometry));
    entry.shown = geometry;
  }

  paint(entry) {
    entry.layer.setStyle(reviewStyle(entry.verdict, entry.key === this.selected));
    const path = entry.layer.getElement();
    if (path) {
      path.dataset.building = entry.key;
      path.dataset.verdict = entry.verdict || "unreviewed";
      path.classList.toggle("selected", entry.key === this.selected);
    }
  }

  select(key, { pan = false } = {}) {
    if (this.editing) this.cancelEdit();
    const before = this.entries.get(this.selected);
    this.selected = key;
    this.note = "";
    if (before) this.paint(before);
    const entry = this.entries.get(key);
    if (entry) {
      this.paint(entry);
      entry.layer.bringToFront();
      if (pan) this.map.panTo(entry.layer.getBounds().getCenter(), { duration: 0.25 });
    }
    this.renderPanel();
  }

  /** The next building no one has judged, in id order from the selected one (wrapping). */
  next() {
    if (!this.job) return;
    const order = [...this.entries.values()].filter((e) => e.building !== null).sort((a, b) => a.building - b.building);
    const start = order.findIndex((e) => e.key === this.selected);
    for (let step = 1; step <= order.length; step++) {
      const entry = order[(start + step + order.length) % order.length];
      if (!entry.verdict) {
        this.select(entry.key, { pan: true });
        return;
      }
    }
    this.select(null);
    this.note = "Every building is reviewed.";
    this.renderPanel();
  }

  /** Correct or wrong for the selected building; wrong on a drawn building withdraws it. */
  judge(verdict) {
    const entry = this.entries.get(this.selected);
    if (!entry) {
      this.note = "Select a building first: click one, or press n.";
      this.renderPanel();
      return;
    }
    if (this.editing) this.cancelEdit();
    if (entry.building === null) {
      if (verdict === "correct") return; // drawn by a reviewer: a building already
      this.save(() => [{ review_id: entry.review, verdict: "wrong", version: entry.version }]);
      entry.layer.setStyle({ opacity: 0.3, fillOpacity: 0 });
      return;
    }
    entry.verdict = verdict; // shown now; the server's answer confirms or corrects it
    this.reshape(entry, entry.original); // correct and wrong judge the model's own outline
    this.paint(entry);
    this.renderPanel();
    this.save(() => [{ building_id: entry.building, verdict, version: entry.version }]);
  }

  toggleEdit() {
    if (this.editing) this.saveEdit();
    else this.startEdit();
  }

  startEdit() {
    const entry = this.entries.get(this.selected);
    if (!entry) return;
    if (this.drawing) this.map.pm.disableDraw();
    this.editing = entry;
    entry.layer.pm.enable({ allowSelfIntersection: false, snappable: false });
    this.renderPanel();
  }

  saveEdit() {
    const entry = this.editing;
    if (!entry) return;
    entry.layer.pm.disable();
    this.editing = null;
    const geometry = entry.layer.toGeoJSON(PRECISION).geometry;
    if (JSON.stringify(geometry) === JSON.stringify(entry.shown)) {
      this.renderPanel();
      return;
    }
    entry.shown = geometry;
    if (entry.building === null) {
      this.save(() => [{ review_id: entry.review, verdict: "added", geometry, version: entry.version }]);
    } else {
      entry.verdict = "edited";
      this.save(() => [{ building_id: entry.building, verdict: "edited", geometry, version: entry.version }]);
    }
    this.paint(entry);
    this.renderPanel();
  }

  cancelEdit() {
    const entry = this.editing;
    if (!entry) return;
    entry.layer.pm.disable();
    this.editing = null;
    entry.layer.setLatLngs(latLngsOf(entry.shown));
    this.renderPanel();
  }

  toggleDraw() {
    if (!this.job) return;
    if (this.drawing) {
      this.map.pm.disableDraw();
      return;
    }
    if (this.editing) this.saveEdit();
    if (this.map.pm.globalDrawModeEnabled()) this.map.pm.disableDraw();
    this.select(null);
    this.drawing = true;
    this.map.pm.enableDraw("Polygon", { continueDrawing: false, pathOptions: reviewStyle("added") });
    this.note = "Click each corner of the missed building; click the first one to close it (Esc cancels).";
    this.renderPanel();
  }

  /** A building drawn in review mode: shown at once, saved as `added`, then replaced by
   * the server's copy (which carries the review id that later edits name). */
  drawn(layer) {
    if (!this.drawing || !this.job) return;
    const geometry = layer.toGeoJSON(PRECISION).geometry;
    layer.setStyle(reviewStyle("added"));
    layer.pm.disable();
    this.save(() => [{ verdict: "added", geometry }]).finally(() => layer.remove());
  }

  /** Send one batch after those before it, so each carries the version the last answer
   * gave. `items` is called at send time for that reason. */
  save(items) {
    const jobId = this.job.id;
    this.pending++;
    this.renderPanel();
    this.saving = this.saving.then(async () => {
      try {
        if (this.job?.id !== jobId) return;
        const page = await api(`jobs/${encodeURIComponent(jobId)}/reviews`, { method: "POST", body: { reviews: items() } });
        if (this.job?.id !== jobId) return;
        showError($("#review-error"), null);
        this.app.retrain.reviewsChanged();
        this.sync(page);
      } catch (err) {
        if (this.job?.id !== jobId) return;
        showError($("#review-error"), err);
        await this.reload(); // a 409 or any refusal: show what the server holds now
      } finally {
        this.pending--;
        this.renderPanel();
      }
    });
    return this.saving;
  }

  async reload() {
    const jobId = this.job?.id;
    if (!jobId) return;
    try {
      const page = await api(`jobs/${encodeURIComponent(jobId)}/reviews`);
      if (this.job?.id === jobId) this.sync(page);
    } catch (err) {
      showError($("#review-error"), err);
    }
  }

  onKey(event) {
    if (!this.job || event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    const actions = {
      a: () => this.judge("correct"),
      r: () => this.judge("wrong"),
      x: () => this.judge("wrong"),
      n: () => this.next(),
      e: () => this.toggleEdit(),
      d: () => this.toggleDraw(),
      Escape: () => (this.editing ? this.cancelEdit() : this.drawing ? this.map.pm.disableDraw() : this.select(null)),
    };
    if (!actions[key]) return;
    event.preventDefault();
    actions[key]();
  }

  renderPanel() {
    const counts = this.counts || {};
    $("#review-counts").replaceChildren(
      ...Object.entries(LABELS).map(([verdict, label]) => {
        const color = VERDICT_COLOURS[verdict];
        return h(
          "li",
          { "data-verdict": verdict },
          h("span", { class: "swatch", style: `border-color:${color};background:${color}33` }),
          `${label} `,
          h("strong", { class: "count" }, String(counts[verdict] ?? 0)),
        );
      }),
    );
    const entry = this.entries.get(this.selected);
    const selection = $("#review-selection");
    if (entry) {
      const name = entry.building !== null ? `Building ${entry.building}` : `Drawn building ${entry.review}`;
      const state = entry.verdict ? LABELS[entry.verdict].toLowerCase() : "not reviewed yet";
      selection.textContent = `${name}: ${state}${this.editing ? " · drag its corners, then press e or Save outline" : ""}`;
    } else {
      selection.textContent = this.note || "No building selected: click one, or press n.";
    }
    for (const id of ["#review-correct", "#review-wrong", "#review-edit"]) $(id).disabled = !entry;
    $("#review-edit").setAttribute("aria-pressed", String(Boolean(this.editing)));
    $("#review-edit").firstChild.textContent = this.editing ? "Save outline " : "Edit outline ";
    $("#review-draw").setAttribute("aria-pressed", String(this.drawing));
    $("#review").setAttribute("aria-busy", String(this.pending > 0));
  }
}
