// Comparing two versions of the job's model on its reviewed area: their overlays side by
// side with a swipe, each side's object F1 against the reviewed buildings, and Promote.

import { api } from "./api.js";
import { overlayLayer } from "./layers.js";
import { Swipe } from "./swipe.js";
import { $, fmtNumber, h, showError } from "./ui.js";

const FINAL = new Set(["done", "failed", "cancelled"]);
const POLL_MS = 1500;

export class Compare {
  constructor(app) {
    this.app = app;
    this.job = null;
    this.swipe = null;
    this.versions = null; // {left, right} while comparing
    this.scores = new Map(); // version -> score of the reviewed area
    $("#compare-start").addEventListener("click", () => this.start());
    $("#compare-stop").addEventListener("click", () => this.stop());
    $("#compare-promote").addEventListener("click", () => this.promote());
  }

  get active() {
    return this.swipe !== null;
  }

  /** Fill the version choices for `job`: its own version on the left, the newest other on
   * the right (or `right` when a retrain has just made it). */
  async prepare(job, right = null) {
    this.stop();
    this.job = job;
    this.scores.clear();
    showError($("#compare-error"), null);
    $("#compare-status").hidden = true;
    let versions = [];
    try {
      const model = await this.app.models.detail(job.model);
      versions = (model.versions || []).map((v) => (typeof v === "number" ? v : v.version)).sort((a, b) => a - b);
    } catch (err) {
      showError($("#compare-error"), err);
    }
    if (this.job !== job) return;
    const options = () => versions.map((v) => h("option", { value: v }, `v${v}${v === job.version ? " (this job's)" : ""}`));
    $("#compare-left").replaceChildren(...options());
    $("#compare-right").replaceChildren(...options());
    const newest = versions.filter((v) => v !== job.version).pop();
    $("#compare-left").value = String(job.version);
    $("#compare-right").value = String(right ?? newest ?? job.version);
    $("#compare-start").disabled = versions.length < 2;
  }

  /** A retrain finished: put its version on the right and say so. */
  async offer(version) {
    const job = this.job;
    try {
      await this.app.models.refresh(job.model); // the version list gains the new one
    } catch (err) {
      showError($("#compare-error"), err);
    }
    if (this.job !== job) return;
    await this.prepare(job, version);
    this.say(`v${version} is ready: compare it with v${this.job.version} on the reviewed area.`);
    $("#compare-start").focus();
  }

  say(text) {
    $("#compare-status").textContent = text;
    $("#compare-status").hidden = !text;
  }

  layer(version, tilejson) {
    const { template } = this.app.overlayUrl(version);
    return overlayLayer(template, tilejson, {
      opacity: this.app.state.opacity,
      onTileError: (err) => (err.status === 503 ? this.app.banner(err) : showError($("#compare-error"), err)),
    });
  }

  async start() {
    const left = Number($("#compare-left").value);
    const right = Number($("#compare-right").value);
    if (!this.job || left === right) {
      showError($("#compare-error"), { message: "Pick two different versions to compare." });
      return;
    }
    this.stop();
    showError($("#compare-error"), null);
    let tilejsons;
    try {
      tilejsons = await Promise.all([left, right].map((v) => api(this.app.overlayUrl(v).tilejson)));
    } catch (err) {
      showError($("#compare-error"), err); // e.g. Triton has not loaded that version
      return;
    }
    if (this.active) return; // a second click while the first was still asking
    this.versions = { left, right };
    this.app.overlay?.remove(); // the two sides replace the single overlay
    this.swipe = new Swipe(
      this.app.map,
      { layer: this.layer(left, tilejsons[0]), label: `v${left}` },
      { layer: this.layer(right, tilejsons[1]), label: `v${right}` },
    );
    $("#compare-start").hidden = true;
    $("#compare-stop").hidden = false;
    this.renderScores();
    this.renderPromote();
    const job = this.job;
    try {
      for (const version of [left, right]) {
        if (!this.scores.has(version)) this.scores.set(version, await this.score(job, version));
        if (this.job !== job || !this.active) return;
        this.renderScores();
      }
      this.say("");
    } catch (err) {
      if (this.job === job) showError($("#compare-error"), err);
    }
  }

  /** The object F1 of `version` on the reviewed area. A version with no buildings there
   * yet gets them first: the server names the area, and a job over it finds them. */
  async score(job, version) {
    const path = `jobs/${encodeURIComponent(job.id)}/reviews/score?version=${version}`;
    try {
      return await api(path);
    } catch (err) {
      if (err.status !== 409 || !err.detail?.aoi) throw err;
      const body = { source: err.detail.source ?? job.source, model: job.model, version, aoi: err.detail.aoi };
      const scoring = await api("jobs", { method: "POST", body });
      this.say(`Finding v${version}'s buildings on the reviewed area to score it (job ${String(scoring.id).slice(0, 8)})…`);
      await this.app.jobs.added(scoring, body.aoi);
      await this.finish(scoring.id);
      return api(path);
    }
  }

  async finish(jobId) {
    for (;;) {
      const job = await api(`jobs/${encodeURIComponent(jobId)}`);
      if (job.state === "done") return job;
      if (FINAL.has(job.state)) throw new Error(`the scoring job ${String(jobId).slice(0, 8)} ${job.state}: ${job.error || ""}`);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  renderScores() {
    const box = $("#compare-scores");
    if (!this.versions) {
      box.hidden = true;
      return;
    }
    const { left, right } = this.versions;
    const f1 = (v) => (this.scores.has(v) ? fmtNumber(this.scores.get(v).f1, 3) : "…");
    const row = (side, v) => {
      const s = this.scores.get(v);
      const detail = s ? ` (precision ${fmtNumber(s.precision, 2)}, recall ${fmtNumber(s.recall, 2)}, ${s.labels} buildings)` : "";
      return [h("dt", {}, `${side} v${v}`), h("dd", { "data-version": v, class: "f1" }, `F1 ${f1(v)}${detail}`)];
    };
    box.replaceChildren(...row("Left", left), ...row("Right", right));
    box.hidden = false;
    this.swipe?.setLabels(`v${left} · F1 ${f1(left)}`, `v${right} · F1 ${f1(right)}`);
  }

  renderPromote() {
    const button = $("#compare-promote");
    if (!this.versions) {
      button.hidden = true;
      return;
    }
    const model = this.app.models.details.get(this.job.model);
    const promoted = model?.promoted_version ?? null;
    const right = this.versions.right;
    button.hidden = false;
    button.disabled = promoted === right;
    button.textContent = promoted === right ? `v${right} is promoted` : `Promote v${right}`;
  }

  /** Promote the right-hand version: tiles and new jobs use it from now on. */
  async promote() {
    const { right } = this.versions || {};
    if (!right) return;
    const button = $("#compare-promote");
    button.disabled = true;
    showError($("#compare-error"), null);
    try {
      await api(`models/${encodeURIComponent(this.job.model)}/versions/${right}/promote`, { method: "POST" });
      await this.app.models.refresh(this.job.model);
      this.say(`v${right} is promoted: the map's tiles and new jobs use it now.`);
    } catch (err) {
      showError($("#compare-error"), err); // a 403 says the key needs the admin scope
    }
    this.renderPromote();
  }

  stop() {
    if (!this.swipe) return;
    this.swipe.remove();
    this.swipe = null;
    this.versions = null;
    $("#compare-start").hidden = false;
    $("#compare-stop").hidden = true;
    this.renderScores();
    this.renderPromote();
    this.app.redrawOverlay();
  }
}
