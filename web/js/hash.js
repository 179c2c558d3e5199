// The URL hash holds the view (position, source, layers, opacity, threshold, model), so a
// link reproduces what the sender saw: #map=17/-6.05/39.24&source=tanzania&overlay=1&...

export function readHash() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const state = {};
  const map = (params.get("map") || "").split("/").map(Number);
  if (map.length === 3 && map.every(Number.isFinite)) {
    state.zoom = map[0];
    state.lat = map[1];
    state.lng = map[2];
  }
  for (const key of ["source", "model", "job"]) {
    if (params.get(key)) state[key] = params.get(key);
  }
  for (const key of ["opacity", "threshold"]) {
    const value = Number(params.get(key));
    if (params.has(key) && Number.isFinite(value)) state[key] = Math.min(1, Math.max(0, value));
  }
  const version = Number(params.get("version"));
  if (params.has("version") && Number.isInteger(version)) state.version = version;
  if (params.has("overlay")) state.overlay = params.get("overlay") !== "0";
  if (params.has("buildings")) state.buildings = params.get("buildings") !== "0";
  return state;
}

let pending = null;

/** Write the state into the hash without adding history entries (panning is not navigation). */
export function writeHash(state) {
  clearTimeout(pending);
  pending = setTimeout(() => {
    const params = new URLSearchParams();
    if (state.zoom !== undefined) {
      const digits = Math.max(0, Math.ceil(Math.log10(2 ** state.zoom / 360)) + 2);
      params.set(
        "map",
        `${state.zoom}/${state.lat.toFixed(digits)}/${state.lng.toFixed(digits)}`,
      );
    }
    for (const key of ["source", "model", "version", "job"]) {
      if (state[key] !== undefined && state[key] !== null) params.set(key, state[key]);
    }
    params.set("overlay", state.overlay ? "1" : "0");
    params.set("opacity", String(state.opacity));
    params.set("threshold", String(state.threshold));
    params.set("buildings", state.buildings ? "1" : "0");
    history.replaceState(null, "", `#${params.toString().replace(/%2F/g, "/")}`);
  }, 150);
}
