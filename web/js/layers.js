// Map layers: the imagery basemap, the prediction overlay and a job's buildings.
// Tiles are fetched (not <img src>) so the API key travels with them and a failing tile
// tells us its status and message: a 503 from predictions becomes a banner, not a grey hole.

import { ApiError, authHeaders } from "./api.js";

const L = window.L;

/** A tile layer that fetches its tiles and reports API errors through onTileError(error). */
export const FetchTileLayer = L.TileLayer.extend({
  options: { onTileError: null, onTileLoad: null },

  createTile(coords, done) {
    const tile = document.createElement("img");
    tile.alt = "";
    tile.setAttribute("role", "presentation");
    const controller = new AbortController();
    tile._abort = controller;
    const url = this.getTileUrl(coords);
    fetch(url, { headers: authHeaders(), signal: controller.signal })
      .then(async (response) => {
        if (response.status === 204 || response.status === 404) {
          // nothing there (outside the data): an empty tile, not an error
          done(null, tile);
          return;
        }
        if (!response.ok) {
          let message = `${response.status} ${response.statusText}`;
          let detail = {};
          try {
            const body = await response.json();
            message = body.error || message;
            detail = body.detail || {};
          } catch {
            // not JSON
          }
          throw new ApiError(response.status, message, detail, response.headers.get("Retry-After"));
        }
        const blob = await response.blob();
        tile.onload = () => {
          URL.revokeObjectURL(tile.src);
          done(null, tile);
          this.options.onTileLoad?.(coords);
        };
        tile.onerror = () => done(new Error("undecodable tile"), tile);
        tile.src = URL.createObjectURL(blob);
      })
      .catch((err) => {
        if (err.name === "AbortError") return;
        done(err, tile);
        this.options.onTileError?.(err instanceof ApiError ? err : new ApiError(0, err.message));
      });
    return tile;
  },

  _removeTile(key) {
    const tile = this._tiles[key];
    tile?.el?._abort?.abort();
    L.TileLayer.prototype._removeTile.call(this, key);
  },
});

function latLngBounds(bounds) {
  if (!bounds || bounds.length !== 4) return undefined;
  const [w, s, e, n] = bounds;
  return L.latLngBounds([s, w], [n, e]);
}

/** `url` with extra query parameters, keeping its {z}/{x}/{y} placeholders readable. */
function withQuery(url, params) {
  const [path, query = ""] = url.split("?");
  const merged = new URLSearchParams(query);
  for (const [key, value] of Object.entries(params)) merged.set(key, value);
  return `${path}?${merged}`;
}

/** The basemap from a source's TileJSON 3.0 document. */
export function imageryLayer(tilejson, { onTileError } = {}) {
  // gaps between chip clusters come back transparent instead of as 404s
  return new FetchTileLayer(withQuery(tilejson.tiles[0], { empty: "transparent" }), {
    bounds: latLngBounds(tilejson.bounds),
    minZoom: 0,
    maxZoom: 24,
    minNativeZoom: tilejson.minzoom ?? 0,
    maxNativeZoom: tilejson.maxzoom ?? 22,
    attribution: tilejson.attribution || "",
    tileSize: 256,
    onTileError,
    className: "imagery-tiles",
  });
}

/** The prediction overlay; its URL carries model, version and threshold, opacity stays local. */
export function overlayLayer(template, tilejson, options) {
  return new FetchTileLayer(template, {
    bounds: latLngBounds(tilejson?.bounds),
    minZoom: tilejson?.minzoom ?? 0,
    maxZoom: 24,
    maxNativeZoom: tilejson?.maxzoom ?? 22,
    opacity: options.opacity,
    zIndex: 5,
    tileSize: 256,
    className: "prediction-tiles",
    onTileError: options.onTileError,
    onTileLoad: options.onTileLoad,
  });
}

function popupHtml(props) {
  const rows = [];
  const fmt = (v, digits) => (typeof v === "number" ? v.toFixed(digits) : v);
  if (props.area_m2 !== undefined) rows.push(["Area", `${fmt(props.area_m2, 1)} m²`]);
  if (props.confidence !== undefined) rows.push(["Confidence", fmt(props.confidence, 2)]);
  const version = props.model_version ?? props.version;
  if (version !== undefined) rows.push(["Model", `${props.model_name ?? props.model ?? ""} v${version}`]);
  if (props.id !== undefined) rows.push(["Id", props.id]);
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
  return `<strong>Building</strong><dl>${rows
    .map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`)
    .join("")}</dl>`;
}

// Leaflet 1.9 dropped DomEvent.fakeStop, which VectorGrid's canvas renderer still calls on click.
L.DomEvent.fakeStop ??= L.DomEvent.stopPropagation;

const BUILDING_STYLE = {
  weight: 1.5,
  color: "#ffd400",
  opacity: 1,
  fill: true,
  fillColor: "#ffd400",
  fillOpacity: 0.25,
};

/** A job's buildings as vector tiles, with a popup per building. */
export function buildingsLayer(jobId, map) {
  const styles = new Proxy({}, { get: () => BUILDING_STYLE });
  const layer = L.vectorGrid.protobuf(`buildings/{z}/{x}/{y}.mvt?job=${encodeURIComponent(jobId)}`, {
    vectorTileLayerStyles: styles,
    interactive: true,
    maxNativeZoom: 22,
    maxZoom: 24,
    zIndex: 10,
    getFeatureId: (feature) => feature.properties.id,
    fetchOptions: { headers: authHeaders() },
    rendererFactory: L.canvas.tile,
  });
  layer.on("click", (event) => {
    L.popup().setLatLng(event.latlng).setContent(popupHtml(event.layer.properties || {})).openOn(map);
  });
  return layer;
}
