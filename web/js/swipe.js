// A swipe between two tile layers: a vertical divider over the map; the left layer shows
// left of it, the right layer right of it. Each layer's container is clipped with a CSS
// clip-path in layer coordinates, recomputed whenever the map moves or zooms.

import { h } from "./ui.js";

const L = window.L;
const STEP = 0.05; // one arrow key press moves the divider by 5 % of the map

export class Swipe {
  /** `left` and `right`: {layer, label}; the layers are added to the map here. */
  constructor(map, left, right) {
    this.map = map;
    this.left = left;
    this.right = right;
    this.fraction = 0.5;
    this.leftLabel = h("div", { class: "swipe-label left" });
    this.rightLabel = h("div", { class: "swipe-label right" });
    this.divider = h(
      "div",
      {
        class: "swipe-divider",
        role: "slider",
        tabindex: "0",
        "aria-label": "Swipe between the two versions (arrow keys move it)",
        "aria-valuemin": "0",
        "aria-valuemax": "100",
      },
      h("div", { class: "swipe-handle", "aria-hidden": "true" }, "⟷"),
      this.leftLabel,
      this.rightLabel,
    );
    L.DomEvent.disableClickPropagation(this.divider);
    L.DomEvent.disableScrollPropagation(this.divider);
    this.divider.addEventListener("pointerdown", (e) => this.grab(e));
    this.divider.addEventListener("keydown", (e) => this.key(e));
    map.getContainer().append(this.divider);
    left.layer.addTo(map);
    right.layer.addTo(map);
    this.clip = this.clip.bind(this);
    map.on("move zoom viewreset resize zoomend", this.clip);
    this.setLabels(left.label, right.label);
    this.clip();
  }

  setLabels(left, right) {
    this.leftLabel.textContent = left;
    this.rightLabel.textContent = right;
  }

  /** Drag the divider: the map must not pan meanwhile. */
  grab(event) {
    event.preventDefault();
    const dragging = this.map.dragging.enabled();
    this.map.dragging.disable();
    this.divider.setPointerCapture(event.pointerId);
    this.divider.classList.add("dragging");
    const move = (e) => this.moveTo(e.clientX);
    const drop = () => {
      this.divider.removeEventListener("pointermove", move);
      this.divider.removeEventListener("pointerup", drop);
      this.divider.removeEventListener("pointercancel", drop);
      this.divider.classList.remove("dragging");
      if (dragging) this.map.dragging.enable();
    };
    this.divider.addEventListener("pointermove", move);
    this.divider.addEventListener("pointerup", drop);
    this.divider.addEventListener("pointercancel", drop);
  }

  key(event) {
    const moves = { ArrowLeft: -STEP, ArrowRight: STEP, Home: -1, End: 1 };
    if (!(event.key in moves)) return;
    event.preventDefault();
    this.setFraction(this.fraction + moves[event.key]);
  }

  moveTo(clientX) {
    const box = this.map.getContainer().getBoundingClientRect();
    this.setFraction((clientX - box.left) / box.width);
  }

  setFraction(fraction) {
    this.fraction = Math.min(1, Math.max(0, fraction));
    this.clip();
  }

  clip() {
    const size = this.map.getSize();
    const x = Math.round(size.x * this.fraction);
    // the layers' containers sit in the map pane, which moves as the map pans
    const nw = this.map.containerPointToLayerPoint([0, 0]);
    const se = this.map.containerPointToLayerPoint(size);
    const cut = nw.x + x;
    const rect = (x0, x1) => `polygon(${x0}px ${nw.y}px, ${x1}px ${nw.y}px, ${x1}px ${se.y}px, ${x0}px ${se.y}px)`;
    const left = this.left.layer.getContainer();
    const right = this.right.layer.getContainer();
    if (left) left.style.clipPath = rect(nw.x, cut);
    if (right) right.style.clipPath = rect(cut, se.x);
    this.divider.style.left = `${x}px`;
    this.divider.setAttribute("aria-valuenow", String(Math.round(this.fraction * 100)));
  }

  remove() {
    this.map.off("move zoom viewreset resize zoomend", this.clip);
    this.left.layer.remove();
    this.right.layer.remove();
    this.divider.remove();
  }
}
