// Small helpers of the dashboard: building elements (text only, never HTML from data), putting
// them in order without disturbing the ones in place, toasts, times, debouncing and coalescing.
// No state of the app lives here.

export const $ = (sel) => document.querySelector(sel);

/** Builds an element; children are nodes or strings (always text, never HTML). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/**
 * Makes `nodes` the children of `parent`, in order, moving only what is out of place: a node
 * that stays keeps its focus, scroll and selection (a removed and re-added node loses them).
 */
export function arrange(parent, nodes) {
  const keep = new Set(nodes);
  for (const c of [...parent.childNodes]) if (!keep.has(c)) c.remove();
  let prev = null;
  for (const n of nodes) {
    const want = prev ? prev.nextSibling : parent.firstChild;
    if (want !== n) parent.insertBefore(n, want);
    prev = n;
  }
}

const SVG = 'http://www.w3.org/2000/svg';
export function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

export function toast(text, bad = false) {
  const el = h('div', { class: bad ? 'bad' : '' }, text);
  $('#toast').append(el);
  setTimeout(() => el.remove(), bad ? 6000 : 3000);
}

export function ago(iso) {
  if (!iso) return '—';
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (s < -1) return `in ${span(-s)}`;
  return s < 2 ? 'just now' : `${span(s)} ago`;
}
function span(s) {
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d`;
}
export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '—';
}
export function shortId(id) {
  return id.length > 13 ? `${id.slice(0, 8)}…${id.slice(-4)}` : id;
}
export function debounce(fn, ms) {
  let t;
  return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
}
/**
 * Runs `fn` `ms` after the first of a run of calls, once for all of them. Unlike a debounce,
 * a steady stream of calls still runs it every `ms`, rather than never.
 */
export function coalesce(fn, ms) {
  let t = 0;
  return () => { if (!t) t = setTimeout(() => { t = 0; fn(); }, ms); };
}
