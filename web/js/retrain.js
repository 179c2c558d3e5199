// Retraining from a job's reviews: start a fine-tune of the job's model version on the
// reviewed area, follow the run to its end, then offer to compare the new version.

import { api } from "./api.js";
import { $, showError } from "./ui.js";

const FINAL = new Set(["done", "failed", "cancelled"]);
const POLL_MS = 1500;

export class Retrain {
  constructor(app) {
    this.app = app;
    this.job = null;
    this.run = null;
    this.timer = null;
    $("#retrain").addEventListener("click", () => this.start());
  }

  /** Show the panel for `job` (null: nothing is reviewed), forgetting any run followed. */
  prepare(job) {
    clearTimeout(this.timer);
    this.job = job;
    this.run = null;
    $("#retrain").disabled = false;
    $("#retrain-run").hidden = true;
    showError($("#retrain-error"), null);
  }

  /** A verdict was saved: a refusal that asked for more reviews may no longer hold. */
  reviewsChanged() {
    showError($("#retrain-error"), null);
  }

  /** The training options the user filled in; empty fields keep the fine-tune's defaults. */
  options() {
    const body = {};
    const epochs = Number.parseInt($("#retrain-epochs").value, 10);
    const steps = Number.parseInt($("#retrain-steps").value, 10);
    if (epochs > 0) body.epochs = epochs;
    if (steps > 0) body.max_steps_per_epoch = steps;
    return body;
  }

  async start() {
    if (!this.job) return;
    const button = $("#retrain");
    button.disabled = true;
    showError($("#retrain-error"), null);
    const job = this.job;
    try {
      // edits still on their way must be in before the server reads the reviewed area
      await this.app.review.saving;
      const run = await api(`jobs/${encodeURIComponent(job.id)}/retrain`, { method: "POST", body: this.options() });
      if (this.job !== job) return;
      this.follow(run);
    } catch (err) {
      // a 400 says how many more buildings need a verdict
      showError($("#retrain-error"), err);
      button.disabled = false;
    }
  }

  follow(run) {
    this.run = run;
    this.show(run);
    if (FINAL.has(run.state)) {
      this.finished(run);
      return;
    }
    this.timer = setTimeout(() => this.poll(), POLL_MS);
  }

  async poll() {
    const job = this.job;
    try {
      const run = await api(this.run.url.replace(/^\//, ""));
      if (this.job !== job) return;
      showError($("#retrain-error"), null);
      this.follow(run);
    } catch (err) {
      if (this.job !== job) return;
      showError($("#retrain-error"), err); // the run goes on; so does asking about it
      this.timer = setTimeout(() => this.poll(), POLL_MS * 4);
    }
  }

  show(run) {
    const pct = Math.floor(run.progress || 0);
    $("#retrain-run").hidden = false;
    $("#retrain-progress").value = pct;
    const epochs = run.epochs ? ` · epoch ${run.epoch}/${run.epochs}` : "";
    const label = `Training run ${String(run.id).slice(0, 8)}`;
    $("#retrain-status").textContent =
      run.state === "done"
        ? `${label}: done · v${run.result_version} is ready, not promoted.`
        : `${label}: ${run.state}${epochs} · ${pct} %`;
  }

  finished(run) {
    $("#retrain").disabled = false;
    if (run.state === "done" && run.result_version) this.app.compare.offer(run.result_version);
    else if (run.state === "failed") showError($("#retrain-error"), { message: `Training failed: ${run.error || "no reason given"}` });
  }
}
