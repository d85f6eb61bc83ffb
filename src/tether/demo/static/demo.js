// The demo messenger: pick a user, see contacts' presence live, chat with a contact or the
// group, see the group's online count, set your own status. It uses the tether JavaScript
// client from clients/js over the tether.v1.json subprotocol, so every frame can be read in
// the browser's developer tools (Network, then WS).
//
// A chat is named by its key: the contact's user id for a direct chat, the conversation id
// ("g:" + group id) for a group. User ids cannot contain ":", so the two never collide.

import { GROUP_PREFIX, TetherClient, directConversationId, randomId } from "../client/index.js";

const $ = (id) => document.getElementById(id);
const STATUS_TEXT = { online: "online", away: "away", busy: "busy", offline: "offline", unknown: "unknown" };
const HISTORY_PAGE = 50;

const demo = {
  config: null,
  client: null,
  user: "",
  presence: new Map(), // user id -> {userId, status, lastSeenMs, version}
  groups: new Map(), // group id -> {groupId, conversationId, owner, memberCount}
  online: new Map(), // group id -> {groupId, online, memberCount}, from the server's counts
  chats: new Map(), // conversation id -> Map of key -> message shown
  loaded: new Set(), // conversations whose history was fetched
  unread: new Map(), // chat key -> messages not yet seen in an open chat
  counted: new Map(), // conversation id -> highest sequence already in `unread`
  open: "", // key of the open chat
  log: [], // every presence change seen, for the console and the browser tests
  countLog: [], // every group count received, for the console and the browser tests
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

function isGroup(key) {
  return key.startsWith(GROUP_PREFIX);
}

/** Return the key of the chat a conversation belongs to, or "" for one the page does not show. */
function chatKey(conversationId) {
  if (isGroup(conversationId)) return conversationId;
  const parts = conversationId.split(":");
  return parts[0] === "d" ? parts.slice(1).find((id) => id !== demo.user) ?? "" : "";
}

function conversationOf(key) {
  return isGroup(key) ? key : directConversationId(demo.user, key);
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

/**
 * Return a list item with a button that opens the chat key: a marker (the status dot or the
 * group sign), a name, and a line of detail followed by the count of unread messages.
 */
function chatItem(key, { className, data, marker, markerText = "", label, detail, detailClass }) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = className;
  Object.assign(button.dataset, data);
  button.setAttribute("aria-current", String(key === demo.open));
  const sign = document.createElement("span");
  sign.className = marker;
  sign.setAttribute("aria-hidden", "true");
  sign.textContent = markerText;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = label;
  const line = document.createElement("span");
  line.className = detailClass;
  line.textContent = detail;
  line.append(...unreadBadge(key));
  button.append(sign, name, line);
  button.addEventListener("click", () => openChat(key));
  item.append(button);
  return item;
}

function renderContacts() {
  const users = [...demo.presence.keys()].sort();
  $("contacts").replaceChildren(
    ...users.map((userId) => {
      const presence = demo.presence.get(userId);
      return chatItem(userId, {
        className: "contact",
        data: { user: userId, status: presence.status },
        marker: "dot",
        label: userId,
        detail: seenText(presence),
        detailClass: "seen",
      });
    }),
  );
  renderChatPresence();
}

function renderChatPresence() {
  if (!demo.open) return;
  $("chat-presence").textContent = isGroup(demo.open)
    ? groupText(demo.open.slice(GROUP_PREFIX.length))
    : seenText(demo.presence.get(demo.open) ?? { status: "unknown" });
}

function unreadBadge(key) {
  const count = demo.unread.get(key) ?? 0;
  if (count === 0) return [];
  const unread = document.createElement("span");
  unread.className = "unread";
  unread.textContent = ` · ${count} new`;
  return [unread];
}

function onPresence(presence) {
  demo.presence.set(presence.userId, presence);
  demo.log.push({ userId: presence.userId, status: presence.status, lastSeenMs: presence.lastSeenMs, at: Date.now() });
  renderContacts();
}

// Groups and their online counts.

/** "2 of 4 online" once the server sent a count, else the member count. */
function groupText(groupId) {
  const group = demo.groups.get(groupId);
  const count = demo.online.get(groupId);
  if (count !== undefined) return `${count.online} of ${count.memberCount || group?.memberCount || "?"} online`;
  const members = group?.memberCount ?? 0;
  return `${members} member${members === 1 ? "" : "s"}`;
}

function renderGroups() {
  const groupIds = [...demo.groups.keys()].sort();
  $("groups").replaceChildren(
    ...groupIds.map((groupId) => {
      const online = demo.online.get(groupId);
      const data = online === undefined ? { group: groupId } : { group: groupId, online: String(online.online) };
      return chatItem(GROUP_PREFIX + groupId, {
        className: "contact group",
        data,
        marker: "group-icon",
        markerText: "#",
        label: groupId,
        detail: groupText(groupId),
        detailClass: "seen count",
      });
    }),
  );
  const threshold = demo.config.groupCountThreshold;
  const uncounted = groupIds.some((groupId) => (demo.groups.get(groupId).memberCount ?? 0) <= threshold);
  $("groups-note").hidden = !uncounted;
  $("groups-note").textContent = `This server sends online counts only for groups of more than ${threshold} members.`;
  renderChatPresence();
}

async function loadGroups() {
  const client = demo.client;
  try {
    const groups = await client.listGroups();
    if (client !== demo.client) return; // signed out meanwhile
    demo.groups = new Map(groups.map((group) => [group.groupId, group]));
  } catch (error) {
    console.warn("could not list groups:", error);
  }
  renderGroups();
}

function onGroups({ joined, left }) {
  for (const group of joined) demo.groups.set(group.groupId, group);
  for (const groupId of left) {
    demo.groups.delete(groupId);
    demo.online.delete(groupId);
    if (demo.open === GROUP_PREFIX + groupId) closeChat();
  }
  renderGroups();
}

function onGroupOnline(count) {
  demo.online.set(count.groupId, count);
  demo.countLog.push({ ...count, at: Date.now() });
  renderGroups();
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

/** Return the line of the group's chat that describes what a group event changed. */
function describeEvent(event) {
  const actor = event.actor || "an operator";
  const users = event.userIds.join(", ");
  switch (event.kind) {
    case "created":
      return `${actor} created the group${users ? ` with ${users}` : ""}`;
    case "members_added":
      return `${actor} added ${users}`;
    case "members_removed":
      return users === event.actor ? `${actor} left` : `${actor} removed ${users}`;
    case "owner_changed":
      return `${users} is now the owner`;
    default:
      return "the group changed";
  }
}

function renderMessages() {
  const list = $("messages");
  if (!demo.open) {
    list.replaceChildren();
    return;
  }
  const chat = chatOf(conversationOf(demo.open));
  // Stored messages in sequence order (the keys pad it), then those still being sent.
  const stored = [...chat.keys()].filter((key) => key.startsWith("seq:")).sort();
  const sending = [...chat.keys()].filter((key) => key.startsWith("pending:"));
  const keys = [...stored, ...sending];
  list.replaceChildren(
    ...keys.map((key) => {
      const message = chat.get(key);
      const item = document.createElement("li");
      if (message.kind) {
        item.className = "event";
        item.textContent = describeEvent(message);
        return item;
      }
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
    for (const message of page.messages) remember(message.event ?? message);
  } catch (error) {
    // NOT_FOUND (6) means the conversation holds no message yet; anything else is retried.
    if (error.code !== 6) demo.loaded.delete(conversationId);
  }
  renderMessages();
}

function openChat(key) {
  demo.open = key;
  demo.unread.delete(key);
  $("app").dataset.view = "chat";
  $("chat-title").textContent = isGroup(key) ? `Group ${key.slice(GROUP_PREFIX.length)}` : `Chat with ${key}`;
  $("composer").hidden = false;
  $("chat-error").textContent = "";
  renderContacts();
  renderGroups();
  renderMessages();
  $("text").focus();
  loadHistory(conversationOf(key));
}

function closeChat() {
  const previous = demo.open;
  demo.open = "";
  $("app").dataset.view = "contacts";
  $("chat-title").textContent = "Choose a contact or a group";
  $("chat-presence").textContent = "";
  $("composer").hidden = true;
  renderContacts();
  renderGroups();
  renderMessages();
  const selector = isGroup(previous)
    ? `.group[data-group="${CSS.escape(previous.slice(GROUP_PREFIX.length))}"]`
    : `.contact[data-user="${CSS.escape(previous)}"]`;
  document.querySelector(selector)?.focus();
}

function onMessage(message) {
  remember(message);
  const key = chatKey(message.conversationId);
  // The unread list after a connect counts the messages that catch-up then delivers: count
  // each sequence number once.
  const counted = demo.counted.get(message.conversationId) ?? 0;
  demo.counted.set(message.conversationId, Math.max(counted, message.sequence));
  if (key === demo.open) {
    renderMessages();
  } else if (key && message.sequence > counted) {
    demo.unread.set(key, (demo.unread.get(key) ?? 0) + 1);
    if (isGroup(key)) renderGroups();
    else renderContacts();
  }
}

async function sendMessage(event) {
  event.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text || !demo.open) return;
  input.value = "";
  const recipient = demo.open; // a user id, or "g:" and a group id
  const conversationId = conversationOf(recipient);
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
  client.on("groupEvent", onMessage); // a line in the group's chat, counted as new like a message
  client.on("unread", ({ conversations }) => {
    for (const { conversationId, lastSequence, unread } of conversations) {
      const key = chatKey(conversationId);
      if (key && key !== demo.open && unread > 0) demo.unread.set(key, unread);
      demo.counted.set(conversationId, Math.max(demo.counted.get(conversationId) ?? 0, lastSequence));
    }
    renderContacts();
    renderGroups();
  });
  client.on("session", loadGroups); // after every reconnect: groups may have changed meanwhile
  client.on("groups", onGroups);
  client.on("groupOnline", onGroupOnline);
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
  demo.groups.clear();
  demo.online.clear();
  demo.chats.clear();
  demo.loaded.clear();
  demo.unread.clear();
  demo.counted.clear();
  demo.open = "";
  renderGroups();
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
