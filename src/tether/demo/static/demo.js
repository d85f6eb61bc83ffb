// The demo messenger: pick a user, see contacts' presence live, chat, set your own status.
// It uses the tether JavaScript client from clients/js over the tether.v1.json subprotocol,
// so every frame can be read in the browser's developer tools (Network, then WS).

import { TetherClient, directConversationId, randomId } from "../client/index.js";

const $ = (id) => document.getElementById(id);
const STATUS_TEXT = { online: "online", away: "away", busy: "busy", offline: "offline", unknown: "unknown" };
const HISTORY_PAGE = 50;

const demo = {
  config: null,
  client: null,
  user: "",
  presence: new Map(), // user id -> {userId, status, lastSeenMs, version}
  chats: new Map(), // conversation id -> Map of key -> message shown
  loaded: new Set(), // conversations whose history was fetched
  unread: new Map(), // contact -> messages not yet seen in an open chat
  open: "", // contact whose chat is open
  log: [], // every presence change seen, for the console and the browser tests
};
window.tetherDemo = demo;

function storageKey(kind, user) {
  return `tether-demo-${kind}:${user}`;
}

async function fetchToken(user) {
  const response = await fetch("/demo/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ?? `token request failed with ${response.status}`);
  return body.token;
}

function gatewayUrl(config) {
  const scheme = config.tls ? "wss" : "ws";
  return `${scheme}://${location.hostname}:${config.wsPort}${config.wsPath}`;
}

function otherUser(conversationId) {
  const parts = conversationId.split(":");
  return parts[0] === "d" ? parts.slice(1).find((id) => id !== demo.user) ?? "" : "";
}

// Presence.

function seenText(presence) {
  if (presence.status !== "offline") return STATUS_TEXT[presence.status] ?? presence.status;
  if (!presence.lastSeenMs) return "offline, not seen yet";
  const seconds = Math.max(0, (Date.now() - presence.lastSeenMs) / 1000);
  if (seconds < 60) return "offline, last seen just now";
  if (seconds < 3600) return `offline, last seen ${Math.floor(seconds / 60)} min ago`;
  const when = new Date(presence.lastSeenMs);
  const sameDay = when.toDateString() === new Date().toDateString();
  const text = sameDay
    ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : when.toLocaleDateString();
  return `offline, last seen ${sameDay ? "at " : "on "}${text}`;
}

function renderContacts() {
  const list = $("contacts");
  const users = [...demo.presence.keys()].sort();
  list.replaceChildren(
    ...users.map((userId) => {
      const presence = demo.presence.get(userId);
      const item = document.createElement("li");
      item.dataset.user = userId;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "contact";
      button.dataset.user = userId;
      button.dataset.status = presence.status;
      button.setAttribute("aria-current", String(userId === demo.open));
      const dot = document.createElement("span");
      dot.className = "dot";
      dot.setAttribute("aria-hidden", "true");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = userId;
      const seen = document.createElement("span");
      seen.className = "seen";
      seen.textContent = seenText(presence);
      const count = demo.unread.get(userId) ?? 0;
      if (count > 0) {
        const unread = document.createElement("span");
        unread.className = "unread";
        unread.textContent = ` · ${count} new`;
        seen.append(unread);
      }
      button.append(dot, name, seen);
      button.addEventListener("click", () => openChat(userId));
      item.append(button);
      return item;
    }),
  );
  if (demo.open) $("chat-presence").textContent = seenText(demo.presence.get(demo.open) ?? { status: "unknown" });
}

function onPresence(presence) {
  demo.presence.set(presence.userId, presence);
  demo.log.push({ userId: presence.userId, status: presence.status, lastSeenMs: presence.lastSeenMs, at: Date.now() });
  renderContacts();
}

// Chats.

function chatOf(conversationId) {
  let chat = demo.chats.get(conversationId);
  if (chat === undefined) {
    chat = new Map();
    demo.chats.set(conversationId, chat);
  }
  return chat;
}

function remember(message) {
  const chat = chatOf(message.conversationId);
  if (message.clientMessageId) chat.delete(`pending:${message.clientMessageId}`);
  chat.set(`seq:${String(message.sequence).padStart(20, "0")}`, message);
}

function renderMessages() {
  const list = $("messages");
  if (!demo.open) {
    list.replaceChildren();
    return;
  }
  const chat = chatOf(directConversationId(demo.user, demo.open));
  // Stored messages in sequence order (the keys pad it), then those still being sent.
  const stored = [...chat.keys()].filter((key) => key.startsWith("seq:")).sort();
  const sending = [...chat.keys()].filter((key) => key.startsWith("pending:"));
  const keys = [...stored, ...sending];
  list.replaceChildren(
    ...keys.map((key) => {
      const message = chat.get(key);
      const item = document.createElement("li");
      item.className = message.sender === demo.user ? "message mine" : "message";
      if (message.sequence) item.dataset.sequence = String(message.sequence);
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = message.text;
      const meta = document.createElement("span");
      meta.className = "meta";
      const time = message.timestampMs
        ? new Date(message.timestampMs).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
        : "sending…";
      meta.textContent = `${message.sender} · ${message.failed ? "not sent" : time}`;
      item.append(text, meta);
      return item;
    }),
  );
  list.scrollTop = list.scrollHeight;
}

async function loadHistory(conversationId) {
  if (demo.loaded.has(conversationId)) return;
  demo.loaded.add(conversationId);
  try {
    const probe = await demo.client.history(conversationId, { limit: 1 });
    const after = Math.max(0, probe.lastSequence - HISTORY_PAGE);
    const page = await demo.client.history(conversationId, { afterSequence: after, limit: HISTORY_PAGE });
    for (const message of page.messages) remember(message);
  } catch (error) {
    // NOT_FOUND (6) means the conversation holds no message yet; anything else is retried.
    if (error.code !== 6) demo.loaded.delete(conversationId);
  }
  renderMessages();
}

function openChat(userId) {
  demo.open = userId;
  demo.unread.delete(userId);
  $("app").dataset.view = "chat";
  $("chat-title").textContent = `Chat with ${userId}`;
  $("composer").hidden = false;
  $("chat-error").textContent = "";
  renderContacts();
  renderMessages();
  $("text").focus();
  loadHistory(directConversationId(demo.user, userId));
}

function closeChat() {
  const previous = demo.open;
  demo.open = "";
  $("app").dataset.view = "contacts";
  $("chat-title").textContent = "Choose a contact";
  $("chat-presence").textContent = "";
  $("composer").hidden = true;
  renderContacts();
  renderMessages();
  document.querySelector(`.contact[data-user="${CSS.escape(previous)}"]`)?.focus();
}

function onMessage(message) {
  remember(message);
  const contact = message.sender === demo.user ? message.recipient : message.sender;
  if (contact === demo.open) {
    renderMessages();
  } else {
    demo.unread.set(contact, (demo.unread.get(contact) ?? 0) + 1);
    renderContacts();
  }
}

async function sendMessage(event) {
  event.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text || !demo.open) return;
  input.value = "";
  const recipient = demo.open;
  const conversationId = directConversationId(demo.user, recipient);
  const clientMessageId = randomId();
  const pending = { conversationId, sender: demo.user, recipient, text, clientMessageId, sequence: 0, timestampMs: 0 };
  chatOf(conversationId).set(`pending:${clientMessageId}`, pending);
  renderMessages();
  try {
    const ack = await demo.client.send(recipient, text, { clientMessageId });
    remember({ ...pending, sequence: ack.sequence, timestampMs: ack.timestampMs, messageId: ack.messageId });
    $("chat-error").textContent = "";
  } catch (error) {
    pending.failed = true;
    $("chat-error").textContent = `Not sent: ${error.message}`;
  }
  renderMessages();
}

// Session.

function showConnection(state, detail = "") {
  const text = {
    idle: "not connected",
    connecting: "connecting…",
    open: "connected",
    reconnecting: "connection lost, reconnecting…",
    closed: "disconnected",
  }[state] ?? state;
  const element = $("connection");
  element.dataset.state = state;
  element.textContent = detail ? `${text} (${detail})` : text;
}

async function signIn(user) {
  demo.user = user;
  sessionStorage.setItem("tether-demo-user", user);
  let deviceId = localStorage.getItem(storageKey("device", user));
  if (!deviceId) {
    deviceId = `web-${randomId().slice(0, 12)}`;
    localStorage.setItem(storageKey("device", user), deviceId);
  }
  const status = sessionStorage.getItem(storageKey("status", user)) ?? "online";
  $("status").value = status;
  $("me-name").textContent = user;
  $("pick").hidden = true;
  $("me").hidden = false;
  $("app").hidden = false;
  $("app").dataset.view = "contacts";

  const client = new TetherClient({
    url: gatewayUrl(demo.config),
    token: () => fetchToken(user),
    deviceId,
    status,
    clientName: "tether-demo",
  });
  demo.client = client;
  client.on("state", ({ state, delayMs }) =>
    showConnection(state, delayMs ? `next try in ${(delayMs / 1000).toFixed(1)} s` : ""),
  );
  client.on("snapshot", ({ contacts }) => {
    demo.presence = new Map(contacts);
    for (const presence of contacts.values()) {
      demo.log.push({ userId: presence.userId, status: presence.status, lastSeenMs: presence.lastSeenMs, at: Date.now(), snapshot: true });
    }
    renderContacts();
  });
  client.on("presence", onPresence);
  client.on("contacts", ({ removed }) => {
    for (const userId of removed) demo.presence.delete(userId);
    renderContacts();
  });
  client.on("message", onMessage);
  client.on("unread", ({ conversations }) => {
    for (const { conversationId, unread } of conversations) {
      const contact = otherUser(conversationId);
      if (contact && contact !== demo.open && unread > 0) demo.unread.set(contact, unread);
    }
    renderContacts();
  });
  client.on("disconnect", ({ code, reason, reconnecting }) => {
    if (!reconnecting) showConnection("closed", `${code}: ${reason}`);
  });
  try {
    await client.connect();
  } catch (error) {
    showConnection("closed", error.message);
  }
}

async function signOut() {
  const client = demo.client;
  demo.client = null;
  sessionStorage.removeItem("tether-demo-user");
  await client?.close();
  demo.presence.clear();
  demo.chats.clear();
  demo.loaded.clear();
  demo.unread.clear();
  demo.open = "";
  $("me").hidden = true;
  $("app").hidden = true;
  $("pick").hidden = false;
  showConnection("idle");
  $("users").querySelector("button")?.focus();
}

async function main() {
  const response = await fetch("/demo/config");
  demo.config = await response.json();
  $("users").replaceChildren(
    ...demo.config.users.map((user) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `Sign in as ${user}`;
      button.dataset.user = user;
      button.addEventListener("click", () => signIn(user));
      item.append(button);
      return item;
    }),
  );
  $("status").addEventListener("change", (event) => {
    const status = event.target.value;
    sessionStorage.setItem(storageKey("status", demo.user), status);
    demo.client?.setStatus(status);
  });
  $("sign-out").addEventListener("click", signOut);
  $("back").addEventListener("click", closeChat);
  $("composer").addEventListener("submit", sendMessage);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && demo.open) closeChat();
  });
  setInterval(renderContacts, 15_000); // "last seen 3 min ago" moves on
  const remembered = sessionStorage.getItem("tether-demo-user");
  if (remembered && demo.config.users.includes(remembered)) await signIn(remembered);
}

main();
