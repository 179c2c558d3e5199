// The jobs panel: every job with a live progress bar fed by its server-sent events, and
// per job: zoom to, show buildings, review, cancel, and downloads (raw and as reviewed).

import { api, download, followEvents } from "./api.js";
import { $, fmtNumber, h, showError } from "./ui.js";

const L = window.L;
const FINAL = new Set(["done", "failed", "cancelled"]);
const SUCCESS = new Set(["done"]);
const AREAS = "tilesight.jobAreas"; // job id -> [w, s, e, n] of the outlines drawn here
// Browsers open at most six HTTP/1.1 connections per server and each event stream holds
// one, so only the newest few unfinished jobs stream; the rest are polled in one request.
const MAX_STREAMS = 2;
const POLL_MS = 3000;

/** Progress of a job in percent, from whatever counts the server gives. */
export function percent(job) {
  if (SUCCESS.has(job.state)) return 100;
  if (typeof job.progress === "number") return Math.floor(job.progress);
  if (job.chunks_total) return Math.round((100 * (job.chunks_done || 0)) / job.chunks_total);
  return 0;
}

export class Jobs {
  constructor(app) {
    this.app = app;
    this.jobs = new Map(); // id -> job
    this.streams = new Map(); // id -> {stop}
    this.errors = new Map(); // id -> ApiError of its last action
    $("#buildings-toggle").addEventListener("change", (e) => this.app.update({ buildings: e.target.checked }));
  }

  async load() {
    try {
      const body = await api("jobs");
      const list = Array.isArray(body) ? body : body.items || body.jobs || [];
      for (const job of list) this.jobs.set(job.id, job);
      showError($("#jobs-error"), null);
    } catch (err) {
      showError($("#jobs-error"), err);
    }
    this.render();
    this.followSome();
    this.loaded = true;
  }

  async added(job, aoi) {
    const b = L.geoJSON(aoi).getBounds();
    const areas = JSON.parse(localStorage.getItem(AREAS) || "{}");
    areas[job.id] = [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()];
    localStorage.setItem(AREAS, JSON.stringify(areas));
    const created_at = new Date().toISOString(); // until its first event says when exactly
    this.jobs.set(job.id, { source: this.app.state.source, model: this.app.state.model, created_at, ...job });
    this.lastAdded = job.id;
    if (this.streams.size >= MAX_STREAMS) {
      // the newest job gets a stream: hand the oldest streamed one over to polling
      const [oldest] = this.streams.keys();
      this.streams.get(oldest).stop();
      this.streams.delete(oldest);
    }
    this.follow(job.id);
    this.followSome();
    this.render();
  }

  /** Stream the newest unfinished jobs; poll the others while any is left. */
  followSome() {
    const open = [...this.jobs.values()]
      .filter((job) => !FINAL.has(job.state))
      .sort((a, b) => String(b.created_at || "").localeCompare(String(a.created_at || "")));
    for (const job of open) {
      if (this.streams.size >= MAX_STREAMS) break;
      this.follow(job.id);
    }
    const polled = open.filter((job) => !this.streams.has(job.id));
    clearTimeout(this.pollTimer);
    if (polled.length) this.pollTimer = setTimeout(() => this.poll(), POLL_MS);
  }

  async poll() {
    try {
      const body = await api("jobs?limit=200");
      for (const job of body.items || []) {
        const known = this.jobs.get(job.id);
        if (!known || this.streams.has(job.id)) continue;
        if (known.state !== job.state || known.progress !== job.progress) {
          this.jobs.set(job.id, { ...known, ...job });
          this.renderOne(this.jobs.get(job.id));
          if (FINAL.has(job.state)) this.finished(job);
        }
      }
      showError($("#jobs-error"), null);
    } catch (err) {
      showError($("#jobs-error"), err);
    }
    this.followSome();
  }

  follow(id) {
    if (this.streams.has(id)) return;
    const stream = followEvents(
      `jobs/${encodeURIComponent(id)}/events`,
      ({ data }) => {
        if (!data || typeof data !== "object") return;
        const job = { ...this.jobs.get(id), ...(data.job || data) };
        this.jobs.set(id, job);
        this.renderOne(job);
        if (FINAL.has(job.state)) this.finished(job);
      },
      {
        shouldStop: (last) => FINAL.has(this.jobs.get(id)?.state) || FINAL.has(last?.state),
        onError: (err) => this.refresh(id, err),
      },
    );
    this.streams.set(id, stream);
  }

  /** When the stream breaks, read the job once so the panel stays true. */
  async refresh(id, streamError) {
    try {
      const job = await api(`jobs/${encodeURIComponent(id)}`);
      this.jobs.set(id, job);
      this.renderOne(job);
      if (FINAL.has(job.state)) this.finished(job);
    } catch {
      this.errors.set(id, streamError);
      this.renderOne(this.jobs.get(id));
    }
  }

  finished(job) {
    const streamed = this.streams.has(job.id);
    this.streams.get(job.id)?.stop();
    this.streams.delete(job.id);
    if (streamed) this.followSome();
    if (SUCCESS.has(job.state) && this.app.state.job === job.id) this.app.refreshBuildings();
  }

  render() {
    const jobs = [...this.jobs.values()].sort((a, b) => String(b.created_at || "").localeCompare(String(a.created_at || "")));
    $("#jobs-list").replaceChildren(...(jobs.length ? jobs.map((job) => this.card(job)) : [h("li", { class: "help" }, "No jobs yet.")]));
  }

  renderOne(job) {
    if (!job) return;
    const old = document.querySelector(`#jobs-list [data-job="${CSS.escape(job.id)}"]`);
    if (old) old.replaceWith(this.card(job));
    else this.render();
  }

  card(job) {
    const pct = percent(job);
    const selected = this.app.state.job === job.id;
    const counts = [
      job.area_km2 !== undefined ? `${fmtNumber(job.area_km2, 3)} km²` : null,
      job.tiles !== undefined ? `${job.tiles} tile${job.tiles === 1 ? "" : "s"}` : null,
      job.chunks_total ? `${job.chunks_done ?? 0}/${job.chunks_total} chunks` : null,
      job.buildings !== undefined ? `${job.buildings} buildings` : null,
    ].filter(Boolean);
    const { model, version } = job;
    const error = this.errors.get(job.id);
    const errorBox = h("p", { class: "error", role: "alert", hidden: true });
    if (error) showError(errorBox, error);
    const label = `Job ${String(job.id).slice(0, 8)}`;
    return h(
      "li",
      { class: `card${selected ? " selected" : ""}`, "data-job": job.id, "data-state": job.state },
      h("header", {}, h("span", { class: "title" }, label), h("span", { class: `state ${job.state}` }, job.state)),
      h("p", { class: "meta" }, `${job.source ?? ""} · ${model ?? ""}${version ? ` v${version}` : ""}`),
      h("progress", { max: 100, value: pct, "aria-label": `${label} progress` }),
      h("p", { class: "meta progress-text" }, `${pct} %${counts.length ? ` · ${counts.join(" · ")}` : ""}`),
      job.error ? h("p", { class: "error" }, job.error) : null,
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", class: "small", onclick: () => this.zoomTo(job) }, "Zoom to"),
        h(
          "button",
          { type: "button", class: "small", "aria-pressed": String(selected), onclick: () => this.show(job) },
          selected ? "Showing buildings" : "Show buildings",
        ),
        FINAL.has(job.state)
          ? null
          : h("button", { type: "button", class: "small", onclick: (e) => this.cancel(job, e.currentTarget) }, "Cancel"),
        SUCCESS.has(job.state) ? this.reviewButton(job) : null,
      ),
      SUCCESS.has(job.state) ? this.downloads(job) : null,
      errorBox,
    );
  }

  bounds(job) {
    const b = job.bbox || JSON.parse(localStorage.getItem(AREAS) || "{}")[job.id];
    if (Array.isArray(b) && b.length === 4) return L.latLngBounds([b[1], b[0]], [b[3], b[2]]);
    if (job.aoi) return L.geoJSON(job.aoi).getBounds();
    return null;
  }

  /** Fit the map to the job's area, or to its buildings when the area was drawn elsewhere. */
  async zoomTo(job) {
    let bounds = this.bounds(job);
    if (!bounds && SUCCESS.has(job.state) && job.buildings) {
      try {
        const collection = await api(`jobs/${encodeURIComponent(job.id)}/buildings.geojson`);
        bounds = L.geoJSON(collection).getBounds();
      } catch (err) {
        this.fail(job, err);
        return;
      }
    }
    if (bounds?.isValid()) this.app.map.fitBounds(bounds, { maxZoom: 19 });
  }

  show(job) {
    const off = this.app.state.job === job.id;
    this.app.update({ job: off ? undefined : job.id, buildings: true });
    $("#buildings-toggle").checked = true;
    this.render();
    if (!off) this.zoomTo(job);
  }

  async cancel(job, button) {
    button.disabled = true;
    try {
      const updated = await api(`jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" });
      this.errors.delete(job.id);
      this.jobs.set(job.id, { ...job, ...(updated || {}) });
      this.renderOne(this.jobs.get(job.id));
    } catch (err) {
      this.fail(job, err);
    }
  }

  reviewButton(job) {
    const reviewing = this.app.review?.job?.id === job.id;
    return h(
      "button",
      {
        type: "button",
        class: "small",
        "aria-pressed": String(reviewing),
        onclick: () => (reviewing ? this.app.review.close() : this.app.review.open(job)),
      },
      reviewing ? "Reviewing" : "Review",
    );
  }

  /** Links to the buildings in each format, as the model found them and as reviewed
   * (for JOSM: the .osm file). They are fetched, so the API key goes with them. */
  downloads(job) {
    const base = `jobs/${encodeURIComponent(job.id)}/buildings`;
    const link = (ext, label, reviewed) => {
      const href = `${base}.${ext}${reviewed ? "?reviewed=true" : ""}`;
      const filename = `buildings-${job.id}${reviewed ? "-reviewed" : ""}.${ext}`;
      return h(
        "a",
        {
          href,
          download: filename,
          "aria-label": `Download ${reviewed ? "reviewed " : ""}${label}`,
          onclick: (event) => {
            event.preventDefault();
            this.download(job, href, filename);
          },
        },
        label,
      );
    };
    const formats = [["geojson", "GeoJSON"], ["osm", "OSM"], ["gpkg", "GeoPackage"]];
    const row = (reviewed) => formats.flatMap(([ext, label], i) => [i ? " · " : "", link(ext, label, reviewed)]);
    return h(
      "p",
      { class: "meta downloads" },
      "Download: ",
      ...row(false),
      h("br"),
      "As reviewed: ",
      ...row(true),
    );
  }

  async download(job, path, filename) {
    try {
      await download(path, filename);
    } catch (err) {
      this.fail(job, err);
    }
  }

  fail(job, err) {
    this.errors.set(job.id, err);
    this.renderOne(this.jobs.get(job.id) || job);
  }
}
