// The viewer's entry point: builds the map from the registered sources, keeps the view
// state (mirrored in the URL hash) and wires the panels to it.

import { api, setApiKey } from "./api.js";
import { Compare } from "./compare.js";
import { AreaDraw } from "./draw.js";
import { readHash, writeHash } from "./hash.js";
import { Jobs } from "./jobs.js";
import { buildingsLayer, imageryLayer, overlayLayer } from "./layers.js";
import { Models } from "./models.js";
import { Retrain } from "./retrain.js";
import { Review } from "./review.js";
import { $, h, showError } from "./ui.js";

const L = window.L;

class App {
  constructor() {
    const shared = readHash();
    this.state = { overlay: true, opacity: 0.7, threshold: 0.5, buildings: true, ...shared };
    // until the user (or a shared link) picks a threshold, each model version brings its own
    this.ownThreshold = shared.threshold !== undefined;
    this.sources = [];
    this.tilejson = null;
    this.basemap = null;
    this.overlay = null;
    this.buildings = null;
    this.map = L.map("map", { zoomControl: true, keyboard: true, worldCopyJump: false, maxZoom: 24 });
    this.map.attributionControl.setPrefix('<a href="https://leafletjs.com">Leaflet</a>');
    if (this.state.zoom !== undefined) this.map.setView([this.state.lat, this.state.lng], this.state.zoom);
    this.map.on("moveend", () => this.update(this.view(), { quiet: true }));
    this.map.on("zoomend", () => this.overlayHint());
    this.models = new Models(this);
    this.jobs = new Jobs(this);
    this.draw = new AreaDraw(this);
    this.review = new Review(this);
    this.retrain = new Retrain(this);
    this.compare = new Compare(this);
    // the limits up front, so an area that is too large is explained before it is sent
    api("/jobs/limits").then((limits) => this.draw.setLimits(limits), () => {});
    this.controls();
  }

  view() {
    const center = this.map.getCenter();
    return { zoom: this.map.getZoom(), lat: center.lat, lng: center.lng };
  }

  /** Change the state; `quiet` skips redrawing layers (e.g. after a pan). */
  update(changes, { quiet = false } = {}) {
    const before = { ...this.state };
    Object.assign(this.state, changes);
    for (const [key, value] of Object.entries(changes)) if (value === undefined) delete this.state[key];
    if (this.map._loaded) writeHash(this.state);
    if (quiet) return;
    if (before.source !== this.state.source) return; // chooseSource redraws everything
    if (["model", "version", "threshold", "overlay"].some((k) => before[k] !== this.state[k])) this.redrawOverlay();
    if (before.opacity !== this.state.opacity) this.overlay?.setOpacity(this.state.opacity);
    if (before.job !== this.state.job || before.buildings !== this.state.buildings) this.refreshBuildings();
  }

  controls() {
    const opacity = $("#opacity");
    const threshold = $("#threshold");
    opacity.value = this.state.opacity;
    threshold.value = this.state.threshold;
    $("#overlay-toggle").checked = this.state.overlay;
    $("#buildings-toggle").checked = this.state.buildings;
    const showOpacity = () => ($("#opacity-out").textContent = `${Math.round(opacity.value * 100)} %`);
    const showThreshold = () => ($("#threshold-out").textContent = Number(threshold.value).toFixed(2));
    showOpacity();
    showThreshold();
    opacity.addEventListener("input", () => {
      showOpacity();
      this.update({ opacity: Number(opacity.value) });
    });
    threshold.addEventListener("input", showThreshold);
    // the threshold changes the tiles themselves: redraw once the user lets go
    threshold.addEventListener("change", () => {
      this.ownThreshold = true;
      this.update({ threshold: Number(threshold.value) });
    });
    $("#overlay-toggle").addEventListener("change", (e) => this.update({ overlay: e.target.checked }));
    $("#source").addEventListener("change", (e) => this.chooseSource(e.target.value, { fit: true }));
    $("#panel-toggle").addEventListener("click", (e) => {
      const collapsed = $("#panel").classList.toggle("collapsed");
      e.currentTarget.setAttribute("aria-expanded", String(!collapsed));
      this.map.invalidateSize();
    });
    $("#api-key").value = localStorage.getItem("tilesight.apiKey") || "";
    $("#api-key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      setApiKey($("#api-key").value.trim());
      location.reload(); // every layer and stream picks the key up from a fresh start
    });
  }

  async start() {
    try {
      const body = await api("sources");
      this.sources = Array.isArray(body) ? body : body.items || body.sources || [];
    } catch (err) {
      showError($("#source-error"), err);
    }
    const select = $("#source");
    select.replaceChildren(...this.sources.map((s) => h("option", { value: s.id }, s.name || s.id)));
    if (!this.sources.length) {
      showError($("#source-error"), { message: "No imagery registered yet: add some with `tilesight sources add`." });
      this.map.setView([0, 0], 2);
    }
    // imagery first: it must show even when the model side is broken or still loading
    const wanted = this.sources.find((s) => s.id === this.state.source) || this.sources[0];
    const fit = this.state.zoom === undefined;
    await Promise.all([
      wanted ? this.chooseSource(wanted.id, { fit, overlay: false }) : null,
      this.models.load(),
    ]);
    await this.redrawOverlay();
    // the first view shows the overlay: zoom in to where predictions exist
    const minzoom = this.overlayTilejson?.minzoom;
    if (fit && minzoom !== undefined && this.map.getZoom() < minzoom) this.map.setZoom(minzoom);
    await this.jobs.load();
  }

  async chooseSource(id, { fit, overlay = true }) {
    $("#source").value = id;
    this.state.source = id;
    try {
      this.tilejson = await api(`tiles/${encodeURIComponent(id)}/tilejson.json`);
      showError($("#source-error"), null);
    } catch (err) {
      showError($("#source-error"), err);
      return;
    }
    this.basemap?.remove();
    this.basemap = imageryLayer(this.tilejson, {
      onTileError: (err) => showError($("#source-error"), err),
    }).addTo(this.map);
    // open on the TileJSON centre: a point on real pixels (chip mosaics have gaps at
    // the middle of their bounds), at a zoom where the imagery is sharp
    const c = this.tilejson.center;
    const b = this.tilejson.bounds;
    if (fit && c) this.map.setView([c[1], c[0]], c[2]);
    else if (fit && b) this.map.fitBounds([[b[1], b[0]], [b[3], b[2]]]);
    writeHash(Object.assign(this.state, this.view()));
    if (overlay) await this.redrawOverlay();
    this.refreshBuildings();
  }

  /** The threshold a model version was tuned with, unless the user has chosen one. */
  suggestedThreshold(value) {
    if (this.ownThreshold || typeof value !== "number") return {};
    $("#threshold").value = value;
    $("#threshold-out").textContent = Number($("#threshold").value).toFixed(2);
    return { threshold: Number($("#threshold").value) };
  }

  /** The overlay's URLs for the chosen version, or for `version` (the swipe's two sides). */
  overlayUrl(version = this.state.version) {
    const { model, source, threshold } = this.state;
    // sure hits come fully opaque; the opacity slider fades the layer in the browser,
    // so moving it costs no new tiles
    const params = new URLSearchParams({ threshold: String(threshold), opacity: "1" });
    if (version !== undefined && version !== null) params.set("version", String(version));
    const base = `predictions/${encodeURIComponent(model)}/${encodeURIComponent(source)}`;
    const pinned = version !== undefined && version !== null ? `?version=${version}` : "";
    return { base, tilejson: `${base}/tilejson.json${pinned}`, template: `${base}/{z}/{x}/{y}.png?${params}` };
  }

  async redrawOverlay() {
    this.overlay?.remove();
    this.overlay = null;
    const seq = (this.overlaySeq = (this.overlaySeq || 0) + 1);
    if (!this.state.overlay || !this.state.model || !this.state.source) return this.overlayHint();
    if (this.compare?.active) return; // the swipe shows two versions instead
    if (!this.models.current()) {
      showError($("#overlay-error"), { message: `Model ${this.state.model} has no version to predict with yet.` });
      return this.overlayHint();
    }
    const { tilejson, template } = this.overlayUrl();
    if (!this.overlayTilejson || this.overlayTilejson.key !== tilejson) {
      try {
        this.overlayTilejson = { key: tilejson, ...(await api(tilejson)) };
        showError($("#overlay-error"), null);
      } catch (err) {
        this.overlayTilejson = null;
        if (err.status !== 503) {
          showError($("#overlay-error"), err); // e.g. an unknown model or version: nothing to draw
          return this.overlayHint();
        }
        this.banner(err); // predictions are down for now: keep the layer so it fills in later
      }
      if (seq !== this.overlaySeq) return; // a newer redraw is under way
    }
    this.overlay = overlayLayer(template, this.overlayTilejson || { bounds: this.tilejson?.bounds }, {
      opacity: this.state.opacity,
      onTileError: (err) => (err.status === 503 ? this.banner(err) : showError($("#overlay-error"), err)),
      onTileLoad: () => this.banner(null),
    }).addTo(this.map);
    this.overlayHint();
  }

  overlayHint() {
    const hint = $("#overlay-hint");
    const minzoom = this.overlayTilejson?.minzoom;
    const tooFar = this.overlay && minzoom !== undefined && this.map.getZoom() < minzoom;
    hint.hidden = !tooFar;
    hint.textContent = tooFar ? `Zoom in to level ${minzoom} or closer to see predictions.` : "";
  }

  /** The predictions-unavailable banner: imagery keeps working while Triton is away. */
  banner(err) {
    const el = $("#banner");
    if (!err) {
      el.hidden = true;
      return;
    }
    const wait = Math.max(5, Number(err.retryAfter) || 10);
    el.textContent = `Predictions are unavailable right now: ${err.message.replace(/\.$/, "")}. Trying again in ${wait} s; imagery keeps working.`;
    el.hidden = false;
    clearTimeout(this.bannerRetry);
    this.bannerRetry = setTimeout(() => this.overlay?.redraw(), 1000 * wait);
  }

  refreshBuildings() {
    this.buildings?.remove();
    this.jobOutline?.remove();
    this.buildings = null;
    this.jobOutline = null;
    // a job under review shows its buildings as the review's editable layer instead
    if (this.state.buildings && this.state.job && this.state.job !== this.review?.job?.id) {
      this.buildings = buildingsLayer(this.state.job, this.map).addTo(this.map);
      const bounds = this.jobs.bounds({ id: this.state.job });
      if (bounds) {
        const style = { color: "#0a5bd3", weight: 2, dashArray: "6 4", fill: false, interactive: false };
        this.jobOutline = L.rectangle(bounds, style).addTo(this.map);
      }
    }
  }
}

function boot() {
  const app = new App();
  window.tilesight = app; // for debugging from the console and for the browser tests
  app.start();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
else boot();
