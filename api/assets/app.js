// chatpipe conversation viewer: plain JavaScript, no dependencies, served
// by the api. Routes (location.hash): #/ (list), #/conversations/<id>,
// #/contacts, #/contacts/<id>, #/deliveries (dead letters), #/rejected.
// Polls the JSON endpoints so new messages, authors and delivery statuses
// appear live. An agent answers an OPEN conversation from the reply box
// (POST /conversations/{id}/messages with an Idempotency-Key, so a resent
// click never stores the message twice).
//
// Sign-in: when the api answers 401 (authentication on), a sign-in form
// replaces the viewer. The tokens from POST /auth/token live in the `auth`
// object below only (never localStorage, sessionStorage or cookies), go out
// as `Authorization: Bearer …`, are refreshed with /auth/token/refresh
// before the access token expires (or on a 401), and are dropped on sign-out
// or when a refresh is refused. With authentication off nothing changes.
"use strict";

const POLL_DETAIL_MS = 1000;
const POLL_LIST_MS = 3000;
const REFRESH_RETRY_MS = 5000;
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
  contactsCursor: null,
  deliveriesCursor: null,
  contactsExtended: false,   // "Load more" clicked: stop refreshing page 1
  deliveriesExtended: false,
  replyKey: null,      // Idempotency-Key of the draft being sent
  replyKeyText: null,  // the text that key was made for
};

// ---- authentication (memory only) -------------------------------------------

const auth = {
  access: null,        // access token
  refresh: null,       // refresh token
  username: null,
  refreshTimer: null,
  refreshing: null,    // the refresh in flight (a Promise), shared by callers
  signInShown: false,
  epoch: 0,            // bumped on sign-in and sign-out: stale answers are dropped
  refreshes: 0,        // how many refreshes succeeded (shown to tests, not secret)
};

// The page's auth state for people and tests: "open" (no sign-in needed so
// far), "signed-out" (form shown) or "signed-in".
function setAuthState(s) {
  document.body.dataset.authState = s;
  document.body.dataset.tokenRefreshes = String(auth.refreshes);
}

function apiError(res, body, fallback) {
  const msg = body && body.error ? body.error : fallback || (res.status + " " + res.statusText);
  const err = new Error(msg);
  err.status = res.status;
  return err;
}

async function readJson(res) {
  try { return await res.json(); } catch (_) { return null; }
}

// Seconds before expiry at which the access token is renewed.
function refreshLead(expiresIn) {
  return Math.min(60, Math.max(1, expiresIn / 5));
}

function scheduleRefresh(delayMs) {
  clearTimeout(auth.refreshTimer);
  // setTimeout fires at once past 2^31-1 ms: cap very long lifetimes.
  const ms = Math.min(Math.max(0, delayMs), 2147483647);
  auth.refreshTimer = setTimeout(() => { refreshTokens(); }, ms);
}

function acceptTokens(body) {
  if (!body || typeof body.access_token !== "string" || !body.access_token) {
    throw new Error("the api answered without an access token");
  }
  auth.access = body.access_token;
  if (typeof body.refresh_token === "string" && body.refresh_token) {
    auth.refresh = body.refresh_token;
  }
  const expiresIn = Number(body.expires_in);
  if (Number.isFinite(expiresIn) && expiresIn > 0 && auth.refresh) {
    scheduleRefresh((expiresIn - refreshLead(expiresIn)) * 1000);
  }
}

function forgetTokens() {
  clearTimeout(auth.refreshTimer);
  auth.refreshTimer = null;
  auth.access = null;
  auth.refresh = null;
  auth.username = null;
  auth.refreshing = null;
  auth.epoch += 1;
}

// Renews the tokens once (concurrent callers share the attempt). Resolves
// true when a new access token is in hand. A refused refresh (4xx) ends the
// session and shows the form; a network or server error keeps the tokens
// and tries again later.
function refreshTokens() {
  if (auth.refreshing) return auth.refreshing;
  if (!auth.refresh) return Promise.resolve(false);
  const epoch = auth.epoch;
  const attempt = (async () => {
    let res;
    try {
      res = await fetch("/auth/token/refresh", {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify({ refresh_token: auth.refresh }),
        cache: "no-store",
        credentials: "omit",
      });
    } catch (_) {
      if (epoch === auth.epoch) scheduleRefresh(REFRESH_RETRY_MS);
      return false;
    }
    const body = await readJson(res);
    if (epoch !== auth.epoch) return false;
    if (res.ok) {
      try {
        acceptTokens(body);
      } catch (_) {
        showSignIn("Your session could not be renewed; please sign in again.");
        return false;
      }
      auth.refreshes += 1;
      setAuthState("signed-in");
      return true;
    }
    if (res.status >= 500 || res.status === 429) {
      scheduleRefresh(REFRESH_RETRY_MS);
      return false;
    }
    showSignIn("Your session has ended; please sign in again.");
    return false;
  })();
  auth.refreshing = attempt;
  attempt.finally(() => { if (auth.refreshing === attempt) auth.refreshing = null; });
  return attempt;
}

// Calls the api with the bearer token (when signed in) and reads the JSON
// answer. A 401 renews the token once and retries; if that fails the
// sign-in form is shown and the returned error has status 401. `options`:
// method, body (sent as JSON), headers. Resolves { body, res }.
async function apiCall(url, options) {
  const opts = options || {};
  const epoch = auth.epoch;
  for (let attempt = 0; ; attempt++) {
    const used = auth.access;
    const headers = Object.assign({ accept: "application/json" }, opts.headers || {});
    if (used) headers.authorization = "Bearer " + used;
    const init = { method: opts.method || "GET", headers, cache: "no-store", credentials: "omit" };
    if (opts.body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
    const res = await fetch(url, init);
    const body = await readJson(res);
    if (epoch !== auth.epoch) {
      const err = new Error("signed out");
      err.status = 401;
      throw err;
    }
    if (res.status === 401 && attempt === 0) {
      // Another request may have renewed the token meanwhile.
      if (auth.access && auth.access !== used) continue;
      if (used && (await refreshTokens())) continue;
    }
    if (res.status === 401) {
      showSignIn(used ? "Your session has ended; please sign in again." : "");
    }
    if (!res.ok) {
      const err = apiError(res, body);
      err.field = body && body.field;
      throw err;
    }
    return { body, res };
  }
}

// GET `url` as JSON (see apiCall).
async function getJson(url) {
  return (await apiCall(url)).body;
}

// An Idempotency-Key: a random UUID.
function newKey() {
  if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
  const b = new Uint8Array(16);
  window.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function showSignIn(message) {
  const wasShown = auth.signInShown;
  if (!wasShown) forgetTokens();
  auth.signInShown = true;
  stopPolling();
  clearData();
  $("viewer").hidden = true;
  $("account").hidden = true;
  $("sign-in-pane").hidden = false;
  $("live").textContent = "● signed out";
  $("live").classList.add("stale");
  const err = $("sign-in-error");
  if (message) { err.textContent = message; err.hidden = false; }
  else if (!wasShown) { err.textContent = ""; err.hidden = true; }
  setAuthState("signed-out");
  if (!wasShown) $("sign-in-username").focus();
}

function hideSignIn() {
  auth.signInShown = false;
  $("sign-in-pane").hidden = true;
  $("viewer").hidden = false;
  $("account-name").textContent = auth.username ? "signed in as " + auth.username : "";
  $("account").hidden = !auth.access;
  setAuthState(auth.access ? "signed-in" : "open");
}

async function signIn(username, password) {
  let res;
  try {
    res = await fetch("/auth/token", {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify({ username, password }),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (_) {
    throw new Error("The api cannot be reached; try again.");
  }
  const body = await readJson(res);
  if (res.status === 400 || res.status === 401 || res.status === 403) {
    throw new Error("Wrong username or password.");
  }
  if (res.status === 429) throw new Error("Too many attempts; wait a moment and try again.");
  if (!res.ok) throw apiError(res, body, "Sign-in failed (" + res.status + ").");
  forgetTokens();
  acceptTokens(body);
  auth.username = username;
}

function signOut() {
  forgetTokens();
  $("sign-in-username").value = "";
  $("sign-in-password").value = "";
  showSignIn("");
  $("sign-in-error").hidden = true;
}

$("sign-in").addEventListener("submit", async (e) => {
  e.preventDefault();
  const username = $("sign-in-username").value.trim();
  const password = $("sign-in-password").value;
  const err = $("sign-in-error");
  if (!username || !password) {
    err.textContent = "Enter your username and password.";
    err.hidden = false;
    return;
  }
  const button = $("sign-in-submit");
  button.disabled = true;
  try {
    await signIn(username, password);
    $("sign-in-password").value = "";
    err.hidden = true;
    err.textContent = "";
    hideSignIn();
    startViewer();
  } catch (ex) {
    $("sign-in-password").value = "";
    err.textContent = String(ex.message || ex);
    err.hidden = false;
    $("sign-in-password").focus();
  } finally {
    button.disabled = false;
  }
});
$("sign-out").addEventListener("click", signOut);

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
  if (auth.signInShown) return;
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
    if (e.status === 401) return; // the sign-in form is shown
    showError("list-error", e);
    setLive(false);
  }
}

function scheduleListRefresh() {
  clearInterval(state.listTimer);
  state.listTimer = setInterval(() => { if (!state.listExtended) loadList(false); }, POLL_LIST_MS);
}

// ---- one conversation -----------------------------------------------------

// "contact Ana", "bot", "agent ana.agent" (older apis send no author).
function authorLabel(a) {
  if (!a) return "";
  if (a.kind === "bot") return "bot";
  return a.kind + (a.name ? " " + a.name : "");
}

function messageItem(m, isNew) {
  const d = m.delivery;
  const author = m.author || {};
  const meta = el("div", { class: "meta" },
    el("span", { class: "author", dataset: { authorKind: author.kind || "" } }, authorLabel(m.author)),
    (m.author ? " · " : "") + m.type + " · " + m.timestamp + " · ", el("span", { class: "mid" }, m.id),
    m.kind && m.kind !== "text" ? " · " + m.kind + (m.media_id ? " (" + m.media_id + ")" : "") : "",
    d ? el("span", { class: "delivery " + d.status, dataset: { deliveryStatus: d.status }, title: "delivery, updated " + d.updated_at }, d.status) : null);
  const errorLine = d && (d.error_code || d.error_reason)
    ? el("div", { class: "delivery-error" }, [d.error_code, d.error_reason].filter(Boolean).join(": "))
    : null;
  return el("li", { class: "msg " + m.type + (isNew ? " new" : ""), dataset: { messageId: m.id, type: m.type, deliveryStatus: d ? d.status : "" } },
    meta, el("pre", { class: "content" }, m.content), errorLine);
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
  if (!id || auth.signInShown) return;
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
    const line = $("detail-channel-line");
    line.hidden = !conv.channel;
    $("detail-channel").textContent = conv.channel || "";
    const contact = conv.contact;
    const link = $("detail-contact");
    link.textContent = contact ? (contact.display_name ? contact.display_name + " (" + contact.provider_user_id + ")" : contact.provider_user_id) : "";
    if (contact) link.setAttribute("href", "#/contacts/" + contact.id);
    else link.removeAttribute("href");
    $("reply-form").hidden = conv.status !== "OPEN";
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
    if (state.selected !== id || e.status === 401) return;
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
  if (state.selected !== id) {
    $("reply-content").value = "";
    showError("reply-error", null);
    $("reply-status").textContent = "";
    state.replyKey = null;
    state.replyKeyText = null;
  }
  hideViews();
  state.selected = id;
  state.seenMessages = new Set();
  state.lastDetailJson = "";
  $("messages").replaceChildren();
  for (const li of $("conversation-list").children) {
    li.classList.toggle("selected", li.dataset.conversationId === id);
  }
  clearInterval(state.detailTimer);
  refreshDetail();
  state.detailTimer = setInterval(refreshDetail, POLL_DETAIL_MS);
}

// ---- replying -----------------------------------------------------------------

async function sendReply() {
  const id = state.selected;
  const text = $("reply-content").value;
  if (!id) return;
  if (!text.trim()) {
    showError("reply-error", new Error("Type a message first."));
    return;
  }
  // One key per draft: sending the same text again (after a network error,
  // say) reuses it, so the api stores the message once.
  if (state.replyKeyText !== text || !state.replyKey) {
    state.replyKey = newKey();
    state.replyKeyText = text;
  }
  const button = $("reply-send");
  button.disabled = true;
  $("reply-status").textContent = "sending…";
  try {
    const { body, res } = await apiCall("/conversations/" + encodeURIComponent(id) + "/messages", {
      method: "POST",
      body: { content: text },
      headers: { "idempotency-key": state.replyKey },
    });
    if (state.selected !== id) return;
    $("reply-content").value = "";
    state.replyKey = null;
    state.replyKeyText = null;
    showError("reply-error", null);
    const replay = res.headers.get("idempotent-replay") === "true" ? " (already sent)" : "";
    $("reply-status").textContent = (body.status === "queued" ? "queued for " + body.channel : "stored") + replay;
    refreshDetail();
  } catch (e) {
    if (e.status === 401) return;
    $("reply-status").textContent = "";
    showError("reply-error", e.status ? e : new Error("The api cannot be reached; your reply was kept, send again."));
  } finally {
    button.disabled = false;
  }
}

$("reply-form").addEventListener("submit", (e) => { e.preventDefault(); sendReply(); });
$("reply-content").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); sendReply(); }
});

// ---- contacts ------------------------------------------------------------------

function contactRow(c) {
  return el("tr", { dataset: { contactId: c.id }, onclick: () => { location.hash = "#/contacts/" + c.id; } },
    el("td", {}, c.created_at), el("td", {}, c.channel), el("td", { class: "mono" }, c.provider_user_id),
    el("td", {}, c.display_name || ""), el("td", {}, c.last_seen_at));
}

async function loadContacts(append) {
  if (auth.signInShown) return;
  const params = new URLSearchParams();
  const channel = $("contacts-channel-filter").value.trim();
  if (channel) params.set("channel", channel);
  if (append && state.contactsCursor) params.set("cursor", state.contactsCursor);
  try {
    const page = await getJson("/contacts?" + params.toString());
    const tbody = $("contacts").querySelector("tbody");
    if (!append) tbody.replaceChildren();
    for (const c of page.contacts) tbody.append(contactRow(c));
    state.contactsCursor = page.next_cursor;
    $("more-contacts").hidden = !page.next_cursor;
    showError("detail-error", null);
  } catch (e) {
    if (e.status === 401) return;
    showError("detail-error", e);
  }
}

async function loadContact(id) {
  if (auth.signInShown) return;
  try {
    const c = await getJson("/contacts/" + encodeURIComponent(id));
    $("contact-detail").hidden = false;
    $("contact-title").textContent = (c.display_name || c.provider_user_id) + " · " + c.channel + " · " + c.provider_user_id;
    $("contact-conversations").replaceChildren(...c.conversations.map((v) =>
      el("li", { dataset: { conversationId: v.id } },
        el("a", { href: "#/conversations/" + v.id, class: "mono" }, v.id), " ",
        el("span", { class: "badge " + v.status }, v.status), " created " + v.created_at)));
    if (c.conversations.length === 0) $("contact-conversations").append(el("li", { class: "hint" }, "no conversations"));
    showError("detail-error", null);
  } catch (e) {
    if (e.status === 401) return;
    $("contact-detail").hidden = true;
    showError("detail-error", e);
  }
}

function openContacts(id) {
  hideViews();
  $("contacts-view").hidden = false;
  $("contact-detail").hidden = true;
  loadContacts(false);
  if (id) loadContact(id);
  state.contactsExtended = false;
  state.detailTimer = setInterval(() => {
    if (!state.contactsExtended) loadContacts(false);
    if (id) loadContact(id);
  }, POLL_LIST_MS);
}

// ---- dead letters ----------------------------------------------------------------

function deliveryRow(d) {
  const retry = el("button", { type: "button", class: "retry", dataset: { deliveryId: String(d.id) } }, "Retry");
  retry.addEventListener("click", () => retryDelivery(d.id, retry));
  return el("tr", { dataset: { deliveryId: String(d.id), messageId: d.message_id } },
    el("td", {}, d.failed_at || d.updated_at),
    el("td", {}, d.channel),
    el("td", { class: "mono" }, el("a", { href: "#/conversations/" + d.conversation_id }, d.conversation_id)),
    el("td", {}, d.content || ""),
    el("td", {}, String(d.attempts)),
    el("td", {}, [d.error_code, d.error_reason].filter(Boolean).join(": ")),
    el("td", {}, retry));
}

async function loadDeliveries(append) {
  if (auth.signInShown) return;
  const params = new URLSearchParams({ status: "failed" });
  if (append && state.deliveriesCursor) params.set("cursor", state.deliveriesCursor);
  try {
    const page = await getJson("/deliveries?" + params.toString());
    const tbody = $("dead-letters").querySelector("tbody");
    if (!append) tbody.replaceChildren();
    for (const d of page.deliveries) tbody.append(deliveryRow(d));
    state.deliveriesCursor = page.next_cursor;
    $("more-deliveries").hidden = !page.next_cursor;
    $("dead-letters-empty").hidden = tbody.children.length > 0;
    if (!$("deliveries-error").dataset.sticky) showError("deliveries-error", null);
  } catch (e) {
    if (e.status === 401) return;
    showError("deliveries-error", e);
  }
}

async function retryDelivery(id, button) {
  button.disabled = true;
  const err = $("deliveries-error");
  try {
    await apiCall("/deliveries/" + encodeURIComponent(id) + "/retry", { method: "POST" });
    delete err.dataset.sticky;
    showError("deliveries-error", null);
    loadDeliveries(false);
  } catch (e) {
    if (e.status === 401) return;
    button.disabled = false;
    err.dataset.sticky = "1";
    showError("deliveries-error", new Error("Retry of delivery " + id + " failed: " + (e.message || e)));
  }
}

function openDeliveries() {
  hideViews();
  $("deliveries-view").hidden = false;
  loadDeliveries(false);
  state.deliveriesExtended = false;
  state.detailTimer = setInterval(() => { if (!state.deliveriesExtended) loadDeliveries(false); }, POLL_LIST_MS);
}

// ---- all rejected events ---------------------------------------------------

async function loadRejected(append) {
  if (auth.signInShown) return;
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
    if (e.status === 401) return;
    showError("detail-error", e);
  }
}

// Hides every view of the right pane and stops its polling.
function hideViews() {
  state.selected = null;
  clearInterval(state.detailTimer);
  state.detailTimer = null;
  $("detail").hidden = true;
  $("detail-empty").hidden = true;
  $("rejected-view").hidden = true;
  $("contacts-view").hidden = true;
  $("deliveries-view").hidden = true;
  showError("detail-error", null);
}

function openRejected() {
  hideViews();
  $("rejected-view").hidden = false;
  loadRejected(false);
  state.detailTimer = setInterval(() => loadRejected(false), POLL_LIST_MS);
}

// ---- routing ----------------------------------------------------------------

function route() {
  const hash = location.hash || "#/";
  const m = hash.match(/^#\/conversations\/([^/?#]+)/);
  const c = hash.match(/^#\/contacts(?:\/([^/?#]+))?/);
  const section = hash.startsWith("#/rejected") ? "rejected"
    : c ? "contacts"
    : hash.startsWith("#/deliveries") ? "deliveries"
    : "conversations";
  for (const name of ["conversations", "contacts", "deliveries", "rejected"]) {
    $("nav-" + name).classList.toggle("active", section === name);
  }
  if (m) {
    openConversation(decodeURIComponent(m[1]));
  } else if (section === "rejected") {
    openRejected();
  } else if (section === "contacts") {
    openContacts(c[1] ? decodeURIComponent(c[1]) : null);
  } else if (section === "deliveries") {
    openDeliveries();
  } else {
    hideViews();
    $("detail-empty").hidden = false;
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
$("contacts-filter").addEventListener("submit", (e) => { e.preventDefault(); loadContacts(false); });
$("more-contacts").addEventListener("click", () => { state.contactsExtended = true; loadContacts(true); });
$("more-deliveries").addEventListener("click", () => { state.deliveriesExtended = true; loadDeliveries(true); });
window.addEventListener("hashchange", () => { if (!auth.signInShown) route(); });

// ---- start, stop ------------------------------------------------------------

function stopPolling() {
  clearInterval(state.listTimer);
  clearInterval(state.detailTimer);
  state.listTimer = null;
  state.detailTimer = null;
}

// Removes every record shown (on sign-out, nothing read stays on screen).
function clearData() {
  $("conversation-list").replaceChildren();
  $("more-conversations").hidden = true;
  $("messages").replaceChildren();
  $("detail").hidden = true;
  $("rejected-view").hidden = true;
  $("detail-empty").hidden = false;
  $("conversation-rejected").querySelector("tbody").replaceChildren();
  $("all-rejected").querySelector("tbody").replaceChildren();
  $("more-rejected").hidden = true;
  $("contacts-view").hidden = true;
  $("deliveries-view").hidden = true;
  $("contacts").querySelector("tbody").replaceChildren();
  $("contact-conversations").replaceChildren();
  $("dead-letters").querySelector("tbody").replaceChildren();
  $("more-contacts").hidden = true;
  $("more-deliveries").hidden = true;
  $("reply-content").value = "";
  $("reply-form").hidden = true;
  state.contactsCursor = null;
  state.deliveriesCursor = null;
  state.replyKey = null;
  state.replyKeyText = null;
  showError("reply-error", null);
  showError("deliveries-error", null);
  state.listCursor = null;
  state.rejectedCursor = null;
  state.lastDetailJson = "";
  state.seenMessages = new Set();
  showError("list-error", null);
  showError("detail-error", null);
}

function startViewer() {
  setLive(true);
  loadList(false);
  scheduleListRefresh();
  route();
}

setAuthState("open");
startViewer();
