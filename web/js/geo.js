// Geometry the viewer needs before it asks the server anything: the area of a drawn
// outline and how many model tiles cover it, so limits can be explained before submitting.

const R = 6378137; // WGS84 semi-major axis, as turf and the server's geodesic area use

const rad = (deg) => (deg * Math.PI) / 180;

/** Area in km² of one ring of [lon, lat] positions on the sphere (spherical excess). */
function ringArea(ring) {
  let total = 0;
  const n = ring.length;
  if (n < 3) return 0;
  for (let i = 0; i < n; i++) {
    const [lon1, lat1] = ring[i];
    const [lon2, lat2] = ring[(i + 1) % n];
    total += rad(lon2 - lon1) * (2 + Math.sin(rad(lat1)) + Math.sin(rad(lat2)));
  }
  return Math.abs((total * R * R) / 2) / 1e6;
}

/** Area in km² of a GeoJSON Polygon or MultiPolygon (holes subtracted). */
export function areaKm2(geometry) {
  const polygons = geometry.type === "Polygon" ? [geometry.coordinates] : geometry.coordinates;
  let total = 0;
  for (const rings of polygons) {
    rings.forEach((ring, i) => {
      total += i === 0 ? ringArea(ring) : -ringArea(ring);
    });
  }
  return total;
}

/** Fractional XYZ tile coordinates of a [lon, lat] position at zoom z. */
export function tileXY([lon, lat], z) {
  const n = 2 ** z;
  const s = Math.sin(rad(Math.max(-85.0511, Math.min(85.0511, lat))));
  return [((lon + 180) / 360) * n, (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * n];
}

function pointInRings(px, py, rings) {
  let inside = false;
  for (const ring of rings) {
    for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
      const [xi, yi] = ring[i];
      const [xj, yj] = ring[j];
      if (yi > py !== yj > py && px < ((xj - xi) * (py - yi)) / (yj - yi) + xi) inside = !inside;
    }
  }
  return inside;
}

function segmentHitsBox([ax, ay], [bx, by], x0, y0, x1, y1) {
  // Liang–Barsky clipping: does segment a-b cross the box [x0,x1]x[y0,y1]?
  let t0 = 0;
  let t1 = 1;
  const dx = bx - ax;
  const dy = by - ay;
  for (const [p, q] of [[-dx, ax - x0], [dx, x1 - ax], [-dy, ay - y0], [dy, y1 - ay]]) {
    if (p === 0) {
      if (q < 0) return false;
    } else {
      const t = q / p;
      if (p < 0) t0 = Math.max(t0, t);
      else t1 = Math.min(t1, t);
      if (t0 > t1) return false;
    }
  }
  return true;
}

/**
 * How many zoom-z tiles a Polygon/MultiPolygon touches, counted in tile space like the
 * server's tile cover. Returns {count, capped} and stops counting past `cap` so a huge
 * outline never freezes the page.
 */
export function tileCount(geometry, z, cap = 200_000) {
  const polygons = geometry.type === "Polygon" ? [geometry.coordinates] : geometry.coordinates;
  const seen = new Set();
  for (const rings of polygons) {
    const tiled = rings.map((ring) => ring.map((p) => tileXY(p, z)));
    const xs = tiled[0].map((p) => p[0]);
    const ys = tiled[0].map((p) => p[1]);
    const [minX, maxX] = [Math.floor(Math.min(...xs)), Math.floor(Math.max(...xs))];
    const [minY, maxY] = [Math.floor(Math.min(...ys)), Math.floor(Math.max(...ys))];
    if ((maxX - minX + 1) * (maxY - minY + 1) > cap * 4) return { count: cap, capped: true };
    for (let x = minX; x <= maxX; x++) {
      for (let y = minY; y <= maxY; y++) {
        const key = `${x}/${y}`;
        if (seen.has(key)) continue;
        if (tileTouches(tiled, x, y)) {
          seen.add(key);
          if (seen.size >= cap) return { count: cap, capped: true };
        }
      }
    }
  }
  return { count: seen.size, capped: false };
}

function tileTouches(rings, x, y) {
  if (pointInRings(x + 0.5, y + 0.5, rings)) return true;
  // an edge running only along the tile's border does not put the tile in the cover,
  // so test against the tile shrunk by a hair
  const e = 1e-9;
  for (const ring of rings) {
    for (let i = 0; i + 1 < ring.length; i++) {
      if (segmentHitsBox(ring[i], ring[i + 1], x + e, y + e, x + 1 - e, y + 1 - e)) return true;
    }
  }
  return false;
}

export function formatKm2(km2) {
  if (km2 < 0.01) return `${Math.round(km2 * 1e6).toLocaleString()} m²`;
  return `${km2.toLocaleString(undefined, { maximumFractionDigits: km2 < 10 ? 3 : 1 })} km²`;
}
