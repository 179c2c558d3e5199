// Models: the model/version selector above the overlay (with the chosen version's
// metrics) and the models panel, where a version can be promoted.

import { api } from "./api.js";
import { $, fmtNumber, h, showError } from "./ui.js";

const asList = (body, key) => (Array.isArray(body) ? body : body?.[key] || body?.items || []);

function versionsOf(model) {
  return asList(model.versions ?? [], "versions").map((v) =>
    typeof v === "number" ? { version: v } : v,
  );
}

function metaOf(version) {
  return version.metadata || version.meta || {};
}

// not drawn, so not listed: as HIDDEN_NAMES in tilesight/overlay.py
const BACKGROUND = new Set(["background", "bg", "none", "nodata", "border"]);
const HEADLINE = ["f1", "precision", "recall", "iou", "pixel_iou", "object_f1", "object_precision", "object_recall"];

/** The headline numbers of a metrics object, best known first (losses, epochs and nested
 * baselines or histories stay out). */
function metricPairs(metrics) {
  const skip = new Set(["best_epoch", "epochs_run", "loss"]);
  const pairs = Object.entries(metrics || {}).filter(([key, value]) => typeof value === "number" && !skip.has(key));
  const rank = (key) => (HEADLINE.includes(key) ? HEADLINE.indexOf(key) : HEADLINE.length);
  return pairs.sort(([a], [b]) => rank(a) - rank(b));
}

function trainedOn(meta) {
  const data = meta.training_data;
  if (!data) return null;
  if (typeof data === "string") return data;
  const sources = (data.sources || []).map((s) => String(s).split("/").filter(Boolean).slice(-1)[0]);
  return sources.length ? sources.join(", ") : null;
}

export class Models {
  constructor(app) {
    this.app = app;
    this.models = [];
    this.details = new Map(); // name -> GET /models/{name}
    $("#model").addEventListener("change", () => this.choose($("#model").value, null));
    $("#version").addEventListener("change", () => {
      const value = $("#version").value;
      this.choose(this.app.state.model, value === "" ? null : Number(value));
    });
  }

  async load() {
    try {
      this.models = asList(await api("models"), "models");
      showError($("#models-error"), null);
    } catch (err) {
      showError($("#models-error"), err);
      return;
    }
    const select = $("#model");
    select.replaceChildren(...this.models.map((m) => h("option", { value: m.name }, m.name)));
    const wanted = this.models.find((m) => m.name === this.app.state.model) || this.models[0];
    if (wanted) await this.choose(wanted.name, this.app.state.version ?? null, { quiet: true });
    this.renderPanel();
  }

  async detail(name, refresh = false) {
    if (refresh || !this.details.has(name)) this.details.set(name, await api(`models/${encodeURIComponent(name)}`));
    return this.details.get(name);
  }

  promotedOf(model) {
    return model.promoted_version ?? model.promoted ?? null;
  }

  /** The chosen version's metadata (null version means the promoted one). */
  current() {
    const model = this.details.get(this.app.state.model);
    if (!model) return null;
    const number = this.app.state.version ?? this.promotedOf(model);
    return versionsOf(model).find((v) => v.version === number) || null;
  }

  /** The model's native zoom, which job tile counts are made at. */
  zoom() {
    const meta = this.current() ? metaOf(this.current()) : {};
    return meta.zoom ?? this.details.get(this.app.state.model)?.zoom ?? null;
  }

  async choose(name, version, { quiet = false } = {}) {
    let model;
    try {
      model = await this.detail(name);
      showError($("#overlay-error"), null);
    } catch (err) {
      showError($("#overlay-error"), err);
      return;
    }
    const versions = versionsOf(model);
    if (version !== null && !versions.some((v) => v.version === version)) version = null;
    $("#model").value = name;
    const promoted = this.promotedOf(model);
    $("#version").replaceChildren(
      h("option", { value: "" }, `promoted${promoted ? ` (v${promoted})` : ""}`),
      ...versions.map((v) => h("option", { value: v.version }, `v${v.version}`)),
    );
    $("#version").value = version === null ? "" : String(version);
    const chosen = versions.find((v) => v.version === (version ?? promoted));
    const tuned = this.app.suggestedThreshold(chosen ? metaOf(chosen).threshold : undefined);
    this.app.update({ model: name, version: version ?? undefined, ...tuned }, { quiet });
    this.renderMetrics();
    this.app.draw.summarise(); // the tile count depends on the model's zoom
  }

  renderMetrics() {
    const current = this.current();
    const box = $("#model-metrics");
    if (!current) {
      box.replaceChildren();
      return;
    }
    const meta = metaOf(current);
    const rows = metricPairs(current.metrics || meta.metrics).slice(0, 6);
    if (meta.zoom !== undefined) rows.push(["zoom", meta.zoom]);
    box.title = (current.metrics || meta.metrics)?.evaluated_on || "";
    box.replaceChildren(
      ...rows.flatMap(([k, v]) => [
        h("dt", {}, k.replace(/_/g, " ")),
        h("dd", {}, typeof v === "number" ? fmtNumber(v, 3) : v),
      ]),
    );
    this.renderClasses(meta.classes || []);
  }

  /** The legend: each class the overlay paints, in its colour from the model's metadata
   * (the background is never painted, so it is not listed). */
  renderClasses(classes) {
    const drawn = classes.filter((c) => !BACKGROUND.has(String(c.name || "").toLowerCase()));
    $("#model-classes").replaceChildren(
      ...drawn.map((c) =>
        h("li", {}, h("span", { class: "swatch", style: `background:${c.color || "#ff3b30"}` }), c.name),
      ),
    );
  }

  renderPanel() {
    const list = $("#models-list");
    const cards = [];
    for (const summary of this.models) {
      const model = this.details.get(summary.name) || summary;
      const promoted = this.promotedOf(model);
      for (const v of versionsOf(model)) {
        const meta = metaOf(v);
        const metrics = metricPairs(v.metrics || meta.metrics)
          .slice(0, 3)
          .map(([k, n]) => `${k.replace(/_/g, " ")} ${fmtNumber(n, 3)}`)
          .join(" · ");
        const isPromoted = v.promoted ?? v.version === promoted;
        const error = h("p", { class: "error", role: "alert", hidden: true });
        cards.push(
          h(
            "li",
            { class: "card", "data-version": v.version },
            h(
              "header",
              {},
              h("span", { class: "title" }, `${summary.name} v${v.version}`),
              isPromoted ? h("span", { class: "state promoted" }, "promoted") : h("span", { class: "state" }, v.state || "available"),
            ),
            h("p", { class: "meta" }, metrics || "no metrics recorded"),
            trainedOn(meta) ? h("p", { class: "meta" }, `trained on ${trainedOn(meta)}`) : null,
            h(
              "div",
              { class: "actions" },
              h("button", { type: "button", class: "small", onclick: () => this.choose(summary.name, v.version) }, "Show on map"),
              isPromoted
                ? null
                : h(
                    "button",
                    {
                      type: "button",
                      class: "small",
                      onclick: (e) => this.promote(summary.name, v.version, e.currentTarget, error),
                    },
                    "Promote",
                  ),
            ),
            error,
          ),
        );
      }
    }
    list.replaceChildren(...cards);
  }

  /** Read `name` and the model list again: a version was trained or promoted. */
  async refresh(name) {
    await this.detail(name, true);
    this.models = asList(await api("models"), "models");
    this.renderPanel();
    await this.choose(this.app.state.model, this.app.state.version ?? null);
  }

  async promote(name, version, button, errorBox) {
    button.disabled = true;
    try {
      await api(`models/${encodeURIComponent(name)}/versions/${version}/promote`, { method: "POST" });
      await this.refresh(name);
    } catch (err) {
      button.disabled = false;
      showError(errorBox, err);
    }
  }
}
