// chatpipe conversation viewer: plain JavaScript, no dependencies, served
// by the api. Routes (location.hash): #/ (list), #/conversations/<id>,
// #/rejected. Polls the JSON endpoints so new messages appear live.
"use strict";

const POLL_DETAIL_MS = 1000;
const POLL_LIST_MS = 3000;
const $ = (id) => document.getElementById(id);

const state = {
  status: "",
  listCursor: null,
  listExtended: false,
  selected: null,
  detailTimer: null,
  listTimer: null,
  seenMessages: new Set(),
  lastDetailJson: "",
  rejectedCursor: null,
};

async function getJson(url) {
  const res = await fetch(url, { headers: { accept: "application/json" }, cache: "no-store" });
  let body = null;
  try { body = await res.json(); } catch (_) { body = null; }
  if (!res.ok) {
    const msg = body && body.error ? body.error : res.status + " " + res.statusText;
    const err = new Error(msg);
    err.status = res.status;
    throw err;
  }
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return node;
}

function setLive(ok) {
  $("live").classList.toggle("stale", !ok);
  $("live").textContent = ok ? "● live" : "● api unreachable";
}

function showError(id, err) {
  const p = $(id);
  if (!err) { p.hidden = true; p.textContent = ""; return; }
  p.hidden = false;
  p.textContent = String(err.message || err);
}

// ---- conversation list ----------------------------------------------------

function conversationItem(c) {
  const li = el("li", { dataset: { conversationId: c.id }, onclick: () => { location.hash = "#/conversations/" + c.id; } },
    el("div", {}, el("span", { class: "cid" }, c.id), " ", el("span", { class: "badge " + c.status }, c.status)),
    el("div", { class: "sub" }, "created " + c.created_at + (c.closed_at ? " · closed " + c.closed_at : "")));
  if (c.id === state.selected) li.classList.add("selected");
  return li;
}

async function loadList(append) {
  const params = new URLSearchParams();
  if (state.status) params.set("status", state.status);
  if (append && state.listCursor) params.set("cursor", state.listCursor);
  try {
    const page = await getJson("/conversations/?" + params.toString());
    const ul = $("conversation-list");
    if (!append) ul.replaceChildren();
    for (const c of page.conversations) ul.append(conversationItem(c));
    state.listCursor = page.next_cursor;
    $("more-conversations").hidden = !page.next_cursor;
    if (!append && page.conversations.length === 0) {
      ul.append(el("li", { class: "hint" }, "no conversations"));
    }
    showError("list-error", null);
    setLive(true);
  } catch (e) {
    showError("list-error", e);
    setLive(false);
  }
}

function scheduleListRefresh() {
  clearInterval(state.listTimer);
  state.listTimer = setInterval(() => { if (!state.listExtended) loadList(false); }, POLL_LIST_MS);
}

// ---- one conversation -----------------------------------------------------

function messageItem(m, isNew) {
  return el("li", { class: "msg " + m.type + (isNew ? " new" : ""), dataset: { messageId: m.id, type: m.type } },
    el("div", { class: "meta" }, m.type + " · " + m.timestamp + " · ", el("span", { class: "mid" }, m.id)),
    el("pre", { class: "content" }, m.content));
}

function rejectedRow(r, withConversation) {
  const cells = [
    el("td", {}, r.rejected_at),
    el("td", {}, r.event_type),
  ];
  if (withConversation) {
    const link = r.conversation_id
      ? el("a", { href: "#/conversations/" + r.conversation_id, class: "mono" }, r.conversation_id)
      : "";
    cells.push(el("td", { class: "mono" }, link));
  }
  cells.push(el("td", { class: "mono" }, r.event_id || ""), el("td", {}, r.reason), el("td", {}, r.detail));
  return el("tr", { dataset: { rejectedId: String(r.id), eventId: r.event_id || "" } }, ...cells);
}

async function refreshDetail() {
  const id = state.selected;
  if (!id) return;
  try {
    const [conv, rejected] = await Promise.all([
      getJson("/conversations/" + encodeURIComponent(id) + "/"),
      getJson("/rejected-events?conversation_id=" + encodeURIComponent(id) + "&limit=100").catch(() => ({ rejected_events: [] })),
    ]);
    if (state.selected !== id) return;
    showError("detail-error", null);
    setLive(true);
    $("detail").hidden = false;
    $("detail-empty").hidden = true;
    $("detail-id").textContent = conv.id;
    const badge = $("detail-status");
    badge.textContent = conv.status;
    badge.className = "badge " + conv.status;
    $("detail-created").textContent = conv.created_at;
    $("detail-updated").textContent = conv.updated_at;
    const inbound = conv.messages.filter((m) => m.type === "INBOUND").length;
    $("detail-count").textContent = inbound + " inbound, " + (conv.messages.length - inbound) + " outbound";
    const json = JSON.stringify(conv.messages);
    if (json !== state.lastDetailJson) {
      const first = state.lastDetailJson === "";
      state.lastDetailJson = json;
      const ol = $("messages");
      ol.replaceChildren(...conv.messages.map((m) => {
        const isNew = !first && !state.seenMessages.has(m.id);
        state.seenMessages.add(m.id);
        return messageItem(m, isNew);
      }));
      if (conv.messages.length === 0) ol.append(el("li", { class: "hint" }, "no messages yet"));
    }
    const tbody = $("conversation-rejected").querySelector("tbody");
    tbody.replaceChildren(...rejected.rejected_events.map((r) => rejectedRow(r, false)));
    $("conversation-rejected-empty").hidden = rejected.rejected_events.length > 0;
    $("conversation-rejected").hidden = rejected.rejected_events.length === 0;
  } catch (e) {
    if (state.selected !== id) return;
    if (e.status === 404) {
      $("detail").hidden = true;
      $("detail-empty").hidden = true;
      showError("detail-error", new Error("conversation " + id + " not found (yet) — retrying"));
    } else {
      showError("detail-error", e);
      setLive(false);
    }
  }
}

function openConversation(id) {
  state.selected = id;
  state.seenMessages = new Set();
  state.lastDetailJson = "";
  $("rejected-view").hidden = true;
  $("messages").replaceChildren();
  for (const li of $("conversation-list").children) {
    li.classList.toggle("selected", li.dataset.conversationId === id);
  }
  clearInterval(state.detailTimer);
  refreshDetail();
  state.detailTimer = setInterval(refreshDetail, POLL_DETAIL_MS);
}

// ---- all rejected events ---------------------------------------------------

async function loadRejected(append) {
  const params = new URLSearchParams();
  const reason = $("reason-filter").value.trim();
  const conv = $("rejected-conversation-filter").value.trim();
  if (reason) params.set("reason", reason);
  if (conv) params.set("conversation_id", conv);
  if (append && state.rejectedCursor) params.set("cursor", state.rejectedCursor);
  try {
    const page = await getJson("/rejected-events?" + params.toString());
    const tbody = $("all-rejected").querySelector("tbody");
    if (!append) tbody.replaceChildren();
    for (const r of page.rejected_events) tbody.append(rejectedRow(r, true));
    state.rejectedCursor = page.next_cursor;
    $("more-rejected").hidden = !page.next_cursor;
    showError("detail-error", null);
  } catch (e) {
    showError("detail-error", e);
  }
}

function openRejected() {
  state.selected = null;
  clearInterval(state.detailTimer);
  $("detail").hidden = true;
  $("detail-empty").hidden = true;
  $("rejected-view").hidden = false;
  loadRejected(false);
  state.detailTimer = setInterval(() => loadRejected(false), POLL_LIST_MS);
}

// ---- routing ----------------------------------------------------------------

function route() {
  const hash = location.hash || "#/";
  const m = hash.match(/^#\/conversations\/([^/?#]+)/);
  $("nav-rejected").classList.toggle("active", hash.startsWith("#/rejected"));
  $("nav-conversations").classList.toggle("active", !hash.startsWith("#/rejected"));
  if (m) {
    openConversation(decodeURIComponent(m[1]));
  } else if (hash.startsWith("#/rejected")) {
    openRejected();
  } else {
    state.selected = null;
    clearInterval(state.detailTimer);
    $("detail").hidden = true;
    $("rejected-view").hidden = true;
    $("detail-empty").hidden = false;
    showError("detail-error", null);
  }
}

$("status-filter").addEventListener("change", (e) => {
  state.status = e.target.value;
  state.listExtended = false;
  loadList(false);
});
$("more-conversations").addEventListener("click", () => { state.listExtended = true; loadList(true); });
$("more-rejected").addEventListener("click", () => loadRejected(true));
$("filter").addEventListener("submit", (e) => {
  e.preventDefault();
  const id = $("goto-id").value.trim();
  if (id) location.hash = "#/conversations/" + id;
});
$("rejected-filter").addEventListener("submit", (e) => { e.preventDefault(); loadRejected(false); });
window.addEventListener("hashchange", route);

loadList(false);
scheduleListRefresh();
route();
