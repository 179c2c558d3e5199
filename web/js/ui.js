// Small DOM helpers shared by the panels.

export const $ = (selector) => document.querySelector(selector);

/** Show an API error (or clear it with null) in the element next to what caused it. */
export function showError(element, error) {
  if (!error) {
    element.hidden = true;
    element.textContent = "";
    return;
  }
  const detail = error.detail || {};
  const extras = [];
  for (const [key, value] of Object.entries(detail)) {
    if (key === "errors" || value === null || value === "" || (Array.isArray(value) && !value.length)) continue;
    extras.push(`${key.replace(/_/g, " ")}: ${Array.isArray(value) ? value.join(", ") : typeof value === "object" ? JSON.stringify(value) : value}`);
  }
  element.textContent = extras.length ? `${error.message} (${extras.join("; ")})` : error.message;
  element.hidden = false;
}

/** Build an element: h("button", {class: "small", onclick}, "Cancel"). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function fmtNumber(value, digits = 2) {
  return typeof value === "number" ? value.toLocaleString(undefined, { maximumFractionDigits: digits }) : "–";
}
