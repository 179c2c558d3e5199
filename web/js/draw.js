// Drawing the area of a job: one rectangle or polygon at a time (leaflet-geoman), its km²
// and tile count shown while it is drawn and edited, and the limits explained up front.

import { api } from "./api.js";
import { areaKm2, formatKm2, tileCount } from "./geo.js";
import { $, showError } from "./ui.js";

const L = window.L;

export class AreaDraw {
  constructor(app) {
    this.app = app;
    this.map = app.map;
    this.layer = null;
    this.limits = null; // {max_area_km2, max_tiles} when the server tells us
    this.drawing = null; // the shape this panel asked geoman for: other panels draw too
    this.map.pm.setGlobalOptions({ snappable: false, allowSelfIntersection: false });
    this.map.pm.setLang("en");
    $("#draw-rect").addEventListener("click", () => this.start("Rectangle"));
    $("#draw-poly").addEventListener("click", () => this.start("Polygon"));
    $("#draw-view").addEventListener("click", () => this.useView());
    $("#draw-clear").addEventListener("click", () => this.clear());
    $("#submit-job").addEventListener("click", () => this.submit());
    // geoman fires pm:create before pm:drawend, so the flag still holds at creation
    this.map.on("pm:create", (event) => this.drawing && this.created(event.layer));
    this.map.on("pm:drawend", () => {
      this.drawing = null;
      this.pressed(null);
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.map.pm.globalDrawModeEnabled()) this.map.pm.disableDraw();
    });
  }

  pressed(shape) {
    $("#draw-rect").setAttribute("aria-pressed", String(shape === "Rectangle"));
    $("#draw-poly").setAttribute("aria-pressed", String(shape === "Polygon"));
  }

  start(shape) {
    if (this.map.pm.globalDrawModeEnabled()) {
      const same = this.map.pm.Draw.getActiveShape() === shape;
      this.map.pm.disableDraw();
      if (same) return;
    }
    this.map.pm.enableDraw(shape, { continueDrawing: false });
    this.drawing = shape;
    this.pressed(shape);
    $("#aoi-summary").textContent =
      shape === "Rectangle"
        ? "Click two opposite corners on the map (Esc cancels)."
        : "Click each corner; click the first point to close (Esc cancels).";
  }

  /** The visible map (inset by a tenth) as the area: drawing without a mouse. */
  useView() {
    if (this.map.pm.globalDrawModeEnabled()) this.map.pm.disableDraw();
    const b = this.map.getBounds().pad(-0.1);
    this.created(L.rectangle(b).addTo(this.map));
    $("#submit-job").focus();
  }

  created(layer) {
    this.clear();
    this.layer = layer;
    layer.setStyle?.({ color: "#0a5bd3", weight: 2, fillOpacity: 0.08 });
    layer.pm.enable({ allowSelfIntersection: false });
    layer.on("pm:edit", () => this.summarise());
    $("#draw-clear").disabled = false;
    this.summarise();
  }

  clear() {
    if (this.layer) this.layer.remove();
    this.layer = null;
    $("#draw-clear").disabled = true;
    $("#submit-job").disabled = true;
    $("#aoi-summary").textContent = "No area drawn yet.";
    $("#aoi-summary").classList.remove("over");
    showError($("#job-error"), null);
  }

  geometry() {
    return this.layer ? this.layer.toGeoJSON(12).geometry : null;
  }

  /** Area and tile count of the drawn outline, checked against the limits we know. */
  summarise() {
    const geometry = this.geometry();
    if (!geometry) return;
    const km2 = areaKm2(geometry);
    const zoom = this.app.models.zoom();
    const parts = [`Area ${formatKm2(km2)}`];
    let over = false;
    if (zoom !== null && zoom !== undefined) {
      const { count, capped } = tileCount(geometry, zoom, (this.limits?.max_tiles ?? 100_000) + 1);
      const tiles = `${count.toLocaleString()} tile${count === 1 ? "" : "s"}`;
      parts.push(`${capped ? "more than " : ""}${tiles} at zoom ${zoom}`);
      if (this.limits?.max_tiles && count > this.limits.max_tiles) over = true;
    }
    if (this.limits?.max_area_km2 && km2 > this.limits.max_area_km2) over = true;
    const summary = $("#aoi-summary");
    summary.textContent = parts.join(" · ") + (over ? " — over the limit: draw a smaller area" : "");
    summary.classList.toggle("over", over);
    $("#submit-job").disabled = over;
    showError($("#job-error"), null);
  }

  setLimits(limits) {
    if (!limits) return;
    this.limits = {
      max_area_km2: limits.max_area_km2 ?? limits.limit_km2 ?? this.limits?.max_area_km2,
      max_tiles: limits.max_tiles ?? limits.limit_tiles ?? this.limits?.max_tiles,
    };
    const text = [];
    if (this.limits.max_area_km2) text.push(`${formatKm2(this.limits.max_area_km2)}`);
    if (this.limits.max_tiles) text.push(`${this.limits.max_tiles.toLocaleString()} tiles`);
    $("#limits").textContent = text.length ? `One job covers at most ${text.join(" and ")}.` : "";
    if (this.layer) this.summarise();
  }

  async submit() {
    const geometry = this.geometry();
    if (!geometry) return;
    const button = $("#submit-job");
    button.disabled = true;
    const body = { source: this.app.state.source, model: this.app.state.model, aoi: geometry };
    if (this.app.state.version !== undefined && this.app.state.version !== null) body.version = this.app.state.version;
    try {
      const job = await api("jobs", { method: "POST", body });
      showError($("#job-error"), null);
      this.clear();
      $("#aoi-summary").textContent = "Job submitted; follow it in the Jobs list below.";
      await this.app.jobs.added(job, geometry);
    } catch (err) {
      // the server's limits come with its refusal: remember them for the next outline
      const detail = err.detail || {};
      if (detail.limit_km2 || detail.limit_tiles) this.setLimits(detail);
      showError($("#job-error"), err);
      button.disabled = false;
    }
  }
}
