/**
 * The tether client for browsers and Node: one WebSocket connection to a gateway that
 * survives network failures.
 *
 *     const client = new TetherClient({ url: "ws://127.0.0.1:7401/ws", token, deviceId: "web-1" });
 *     client.on("presence", (presence) => console.log(presence.userId, presence.status));
 *     client.on("message", (message) => console.log(message.sender, message.text));
 *     await client.connect();
 *     await client.send("bob", "hello");
 *
 * It follows docs/protocol.md and behaves like the Python SDK (`tether.client.Client`). It
 * heartbeats at the interval the server sends in Connected, and treats a server silent for the
 * offline timeout as gone. It reconnects with exponential backoff and full jitter, never sooner
 * than the server's `reconnect_delay_ms`, and tries its URLs in turn. After a reconnect it
 * resends unacknowledged messages with their original client_message_id and catches up by
 * sequence number (Unread, then Sync pages), handing each message over once and in order. It
 * stops after a final disconnect code (4500 to 4999). Group requests wait for their results
 * in groups.js, and are sent again after a reconnect like unacknowledged messages.
 *
 * Frames are plain objects shaped like Protobuf's canonical JSON mapping of `tether.v1.Frame`,
 * with 64-bit integers as numbers and bytes as Uint8Array. The codec turns them into wire
 * messages: `jsonCodec` (the default, `tether.v1.json`, no dependencies) or the binary codec
 * of protobuf-codec.js (`tether.v1`, smaller and cheaper for the server).
 */

import { Conversations } from "./catchup.js";
import { Code, ConnectionClosed, RequestError, TRANSPORT_LOST, isFinal } from "./codes.js";
import { GROUP_PREFIX, GroupRequests, groupCountOf, groupOf } from "./groups.js";
import { jsonCodec } from "./json-codec.js";

/** Protocol version sent in Connect. */
export const PROTOCOL_VERSION = 1;
/** Milliseconds a session must last before the reconnect backoff starts again from its first step. */
export const STABLE_SESSION_MS = 10_000;
/** Share of a token's lifetime after which a token function is asked for a new one. */
export const REFRESH_AT = 0.8;

const STATUS_FRAMES = Object.freeze({
  online: { activity: "ACTIVITY_ACTIVE", mode: "MODE_AVAILABLE" },
  away: { activity: "ACTIVITY_IDLE", mode: "MODE_AVAILABLE" },
  busy: { mode: "MODE_BUSY" },
  invisible: { mode: "MODE_INVISIBLE" },
});

/** The statuses a user can choose with `setStatus`. */
export const STATUSES = Object.freeze(Object.keys(STATUS_FRAMES));

const textDecoder = new TextDecoder();
const textEncoder = new TextEncoder();

/**
 * Return a reconnect delay in milliseconds, drawn uniformly between initialMs / 2 and the
 * exponential bound initialMs * 2 ** attempt, capped at maxMs (docs/protocol.md, section 7).
 */
export function backoffDelay(attempt, initialMs = 500, maxMs = 30_000, random = Math.random) {
  const bound = Math.min(maxMs, initialMs * 2 ** attempt);
  const low = initialMs / 2;
  return low + random() * Math.max(0, bound - low);
}

/** Return "online", "away", "busy", "offline" or "unknown" for a `tether.v1.Status` value. */
export function statusName(status) {
  if (typeof status !== "string" || !status.startsWith("STATUS_")) return "unknown";
  const name = status.slice("STATUS_".length).toLowerCase();
  return name === "unspecified" ? "unknown" : name;
}

/** Return the id of the direct conversation between two users: `d:` and both ids, sorted. */
export function directConversationId(userA, userB) {
  return userA < userB ? `d:${userA}:${userB}` : `d:${userB}:${userA}`;
}

/** Return a random id of 32 hex digits (works outside secure contexts, unlike randomUUID). */
export function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

function presenceOf(item) {
  return Object.freeze({
    userId: item.userId ?? "",
    status: statusName(item.status),
    lastSeenMs: item.lastSeenMs ?? 0,
    version: item.version ?? 0,
  });
}

function messageOf(item) {
  const body = item.body ?? new Uint8Array(0);
  return Object.freeze({
    messageId: item.messageId ?? 0,
    conversationId: item.conversationId ?? "",
    sequence: item.sequence ?? 0,
    sender: item.sender ?? "",
    senderDevice: item.senderDevice ?? "",
    recipient: item.recipient ?? "",
    body,
    text: textDecoder.decode(body),
    timestampMs: item.timestampMs ?? 0,
    clientMessageId: item.clientMessageId ?? "",
    /** The group event this message records (see groupEventOf), or null for a user's message. */
    event: item.groupEvent ? groupEventOf(item) : null,
  });
}

/**
 * Return a group event {groupId, conversationId, sequence, kind, actor, userIds, timestampMs}:
 * kind is "created", "members_added", "members_removed" or "owner_changed".
 */
function groupEventOf(item) {
  const event = item.groupEvent;
  const kind = typeof event.kind === "string" ? event.kind : "GROUP_EVENT_UNSPECIFIED";
  const conversationId = item.conversationId ?? "";
  return Object.freeze({
    groupId: conversationId.startsWith("g:") ? conversationId.slice(2) : conversationId,
    conversationId,
    sequence: item.sequence ?? 0,
    kind: kind.replace(/^GROUP_EVENT_/, "").toLowerCase(),
    actor: event.actor ?? "",
    userIds: Object.freeze([...(event.userIds ?? [])]),
    timestampMs: item.timestampMs ?? 0,
  });
}

function sendAckOf(item) {
  return Object.freeze({
    clientMessageId: item.clientMessageId ?? "",
    messageId: item.messageId ?? 0,
    conversationId: item.conversationId ?? "",
    sequence: item.sequence ?? 0,
    timestampMs: item.timestampMs ?? 0,
  });
}

/**
 * A connection to a tether gateway that survives network failures.
 *
 * Events, subscribed with `on(name, listener)`:
 * - `state`: {state, delayMs?}, where state is "connecting", "open", "reconnecting" or "closed"
 * - `session`: the server accepted the connection (after every reconnect too)
 * - `snapshot`: {contacts: Map of user id to presence}, once per session
 * - `presence`: one contact's presence {userId, status, lastSeenMs, version} changed
 * - `contacts`: {added, removed}, the contact list changed
 * - `unread`: {conversations: [{conversationId, lastSequence, readSequence, unread}], truncated}
 * - `message`: a message for this user, once and in sequence order per conversation. A group
 *   message has the group's conversation id ("g:" + group id) as conversationId and recipient.
 * - `groupEvent`: {groupId, sequence, kind, actor, userIds, ...}, a change of a group's members
 *   or owner, in sequence order with the group's messages; kind is "created", "members_added",
 *   "members_removed" or "owner_changed", and actor is empty for an operator.
 * - `groups`: {joined: [group], left: [groupId], deleted: [groupId]}, this user joined or left
 *   groups while connected; a deleted group is in both left and deleted
 * - `groupOnline`: {groupId, online, memberCount}, a large group's online count changed. It comes
 *   at most once per count interval, and smaller groups get none (docs/groups.md).
 * - `refreshed`: {tokenExpiresMs}, the server accepted a Refresh with a new token
 * - `status`: {status}, this client's own chosen status
 * - `disconnect`: {code, reason, reconnecting, reconnectDelayMs}, the last from the server
 * - `error`: a server Error frame that no request of this client waits for
 */
export class TetherClient {
  /**
   * Options (times in milliseconds):
   * - `url` or `urls`: one gateway URL or a list; each reconnect tries the next in turn.
   * - `token`: a JWT string, or a function returning one (or a promise of one). A function is
   *   called before every connect, for a Refresh at REFRESH_AT of the token's lifetime, and
   *   after TOKEN_EXPIRED, which is then retried instead of final.
   * - `deviceId`: stable per installation, 1 to 64 bytes.
   * - `codec`: `jsonCodec` (default) or a binary codec from protobuf-codec.js.
   * - `WebSocket`: the WebSocket class (default `globalThis.WebSocket`; in Node 20, `ws`).
   * - `status`: "online" (default), "away", "busy" or "invisible"; kept across reconnects.
   * - `platform`, `clientName`, `reconnect` (default true), `connectTimeoutMs` (10,000),
   *   `ackTimeoutMs` (10,000), `backoffInitialMs` (500), `backoffMaxMs` (30,000),
   *   `autoAck` (default true), `random` (for tests).
   */
  constructor(options) {
    const urls = options.urls ?? (options.url === undefined ? [] : [options.url]);
    if (urls.length === 0) throw new TypeError("url or urls must name at least one gateway");
    if (!options.deviceId) throw new TypeError("deviceId is required");
    if (options.token === undefined) throw new TypeError("token is required");
    this.urls = [...urls];
    this.urlIndex = 0;
    this.token = options.token;
    this.deviceId = options.deviceId;
    this.codec = options.codec ?? jsonCodec;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new TypeError("no WebSocket class: pass one as the WebSocket option (in Node 20, from 'ws')");
    }
    this.platform = options.platform ?? "PLATFORM_WEB";
    this.clientName = options.clientName ?? "tether-js";
    this.reconnect = options.reconnect ?? true;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.ackTimeoutMs = options.ackTimeoutMs ?? 10_000;
    this.backoffInitialMs = options.backoffInitialMs ?? 500;
    this.backoffMaxMs = options.backoffMaxMs ?? 30_000;
    this.random = options.random ?? Math.random;
    this.ownStatus = "online";
    this.statusFrame = STATUS_FRAMES.online;
    this.setLocalStatus(options.status ?? "online");

    /** The open session's Connected fields, or null between sessions. */
    this.session = null;
    /** @type {Map<string, object>} presence of each contact, replaced by every snapshot */
    this.presence = new Map();
    /** "idle", "connecting", "open", "reconnecting" or "closed". */
    this.state = "idle";
    this.listeners = new Map();
    this.pending = new Map(); // client_message_id -> {send, resolve, reject, timer}
    this.groupRequests = new GroupRequests({ timeoutMs: this.ackTimeoutMs, idPrefix: randomId().slice(0, 8) });
    /** @type {Map<string, object>} the last online count of each large group, by group id */
    this.groupOnline = new Map();
    this.conversations = new Conversations({
      deliver: (message) =>
        message.groupEvent
          ? this.emit("groupEvent", groupEventOf(message))
          : this.emit("message", messageOf(message)),
      deviceId: this.deviceId,
      autoAck: options.autoAck ?? true,
      requestTimeoutMs: this.ackTimeoutMs,
      onFailure: (error) => this.dropConnection(`catch-up failed: ${error.message}`),
    });
    this.connection = null; // the current attempt's state, see connectOnce
    this.closing = false;
    this.runner = null;
    this.firstSession = null;
    this.wakeUp = null; // ends the wait before a reconnect early, on close()
    this.nonce = 0;
    this.lastReason = "none";
  }

  /** Subscribe to an event; returns a function that unsubscribes. */
  on(name, listener) {
    let set = this.listeners.get(name);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(name, set);
    }
    set.add(listener);
    return () => set.delete(listener);
  }

  /**
   * Open the connection; resolves with the session once the server accepted it. Rejects
   * with ConnectionClosed after a final code (or any code when reconnect is off), and with
   * an Error if no session opened within connectTimeoutMs.
   */
  connect() {
    if (this.runner !== null) throw new Error("connect() was called already");
    this.firstSession = {};
    const opened = new Promise((resolve, reject) => {
      this.firstSession.resolve = resolve;
      this.firstSession.reject = reject;
    });
    this.runner = this.run();
    let timer;
    const timeout = new Promise((_resolve, reject) => {
      timer = setTimeout(
        () =>
          reject(new Error(`no session within ${this.connectTimeoutMs} ms; last error: ${this.lastReason}`)),
        this.connectTimeoutMs,
      );
    });
    return Promise.race([opened, timeout]).then(
      (session) => {
        clearTimeout(timer);
        return session;
      },
      async (error) => {
        clearTimeout(timer);
        await this.close();
        throw error;
      },
    );
  }

  /** Send Disconnect, close the connection and stop reconnecting. */
  async close() {
    this.closing = true;
    const connection = this.connection;
    if (connection !== null && this.session !== null) {
      this.sendFrame({ disconnect: { code: 1000, reason: "client closed" } });
    }
    if (connection !== null) connection.finish(1000, "client closed", 0);
    if (this.wakeUp !== null) this.wakeUp();
    if (this.runner !== null) {
      await this.runner;
      this.runner = null;
    }
    this.failPending(new ConnectionClosed(1000, "client closed"));
  }

  /**
   * Send a direct message; resolves with the server's SendAck once it is stored.
   *
   * body is a string (sent as UTF-8) or a Uint8Array. Rejects with RequestError if the server
   * refused it, with an Error after ackTimeoutMs, and with ConnectionClosed if the client
   * stopped. Until then it is resent after every reconnect with the same client_message_id,
   * so the server stores it once.
   */
  send(recipient, body, { clientMessageId } = {}) {
    const bytes = typeof body === "string" ? textEncoder.encode(body) : body;
    const id = clientMessageId ?? randomId();
    const send = { clientMessageId: id, recipient, body: bytes };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`no answer to message ${id} within ${this.ackTimeoutMs} ms`));
      }, this.ackTimeoutMs);
      this.pending.set(id, { send, resolve, reject, timer });
      if (this.session !== null) this.sendFrame({ send });
    });
  }

  /** Set "online", "away", "busy" or "invisible"; kept across reconnects. */
  setStatus(status) {
    this.setLocalStatus(status);
    if (this.session !== null) this.sendFrame({ setStatus: this.statusFrame });
    this.emit("status", { status });
  }

  /**
   * Return one page of a conversation's history: {messages, hasMore, lastSequence}.
   *
   * For showing older messages; it does not change what the catch-up hands over. Rejects
   * with RequestError NOT_FOUND for a conversation that contains no message yet.
   */
  async history(conversationId, { afterSequence = 0, limit = 50 } = {}) {
    const result = await this.conversations.request(
      { conversationId, afterSequence, limit },
      "history",
    );
    return {
      messages: (result.messages ?? []).map(messageOf),
      hasMore: result.hasMore ?? false,
      lastSequence: result.lastSequence ?? 0,
    };
  }

  // Groups (docs/groups.md). A request is sent again after each reconnect until its result arrives.

  /**
   * Create a group owned by this user, with members besides the owner; resolves with the
   * group {groupId, conversationId, owner, memberCount, incarnation}. Rejects with RequestError
   * ALREADY_EXISTS if another user owns a group of that id, and BAD_REQUEST for an invalid id.
   */
  async createGroup(groupId, members = []) {
    const result = await this.groupRequest("GROUP_ACTION_CREATE", groupId, members);
    return groupOf((result.groups ?? [])[0] ?? {});
  }

  /** Add users to a group this user owns; resolves with those who were not members yet. */
  async addGroupMembers(groupId, users) {
    const result = await this.groupRequest("GROUP_ACTION_ADD", groupId, users);
    return result.changed ?? [];
  }

  /** Remove users from a group this user owns; resolves with those who were members. */
  async removeGroupMembers(groupId, users) {
    const result = await this.groupRequest("GROUP_ACTION_REMOVE", groupId, users);
    return result.changed ?? [];
  }

  /** Leave a group; its owner cannot (RequestError NOT_ALLOWED). Needs an open session. */
  async leaveGroup(groupId) {
    if (this.session === null) throw new Error("leaveGroup needs an open session");
    await this.groupRequest("GROUP_ACTION_REMOVE", groupId, [this.session.userId]);
  }

  /** Resolve with every group this user belongs to, in group id order. */
  async listGroups() {
    const result = await this.groupRequest("GROUP_ACTION_LIST", "", []);
    return (result.groups ?? []).map(groupOf);
  }

  /** Send a message to a group of this user; the rules of `send` apply. */
  sendToGroup(groupId, body, options = {}) {
    return this.send(GROUP_PREFIX + groupId, body, options);
  }

  groupRequest(action, groupId, userIds) {
    const send = this.session === null ? null : (frame) => this.sendFrame(frame);
    return this.groupRequests.request(action, groupId, userIds, send);
  }

  // Connection loop.

  async run() {
    let attempt = 0;
    while (!this.closing) {
      const started = Date.now();
      this.setState("connecting");
      const { code, reason, delayMs, opened } = await this.connectOnce();
      if (opened && Date.now() - started >= STABLE_SESSION_MS) attempt = 0;
      this.lastReason = reason;
      const retryWithNewToken = code === Code.TOKEN_EXPIRED && typeof this.token === "function";
      const final =
        this.closing ||
        !this.reconnect ||
        (code !== TRANSPORT_LOST && isFinal(code) && !retryWithNewToken);
      this.emit("disconnect", { code, reason, reconnecting: !final, reconnectDelayMs: delayMs });
      if (final) {
        this.setState("closed");
        const error = new ConnectionClosed(code, reason);
        if (this.firstSession?.reject) this.firstSession.reject(error);
        this.failPending(error);
        return;
      }
      const delay = Math.max(
        delayMs,
        backoffDelay(attempt, this.backoffInitialMs, this.backoffMaxMs, this.random),
      );
      attempt += 1;
      this.urlIndex = (this.urlIndex + 1) % this.urls.length;
      this.setState("reconnecting", { delayMs: Math.round(delay) });
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, delay);
        this.wakeUp = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wakeUp = null;
    }
    this.setState("closed");
  }

  /** Run one connection; resolves with {code, reason, delayMs, opened} when it ends. */
  connectOnce() {
    return new Promise((resolve) => {
      const url = this.urls[this.urlIndex];
      const connection = {
        socket: null,
        opened: false,
        lastHeard: Date.now(),
        timeoutMs: this.connectTimeoutMs,
        heartbeat: null,
        refresher: null,
        done: false,
        finish: (code, reason, delayMs) => {
          if (connection.done) return;
          connection.done = true;
          clearInterval(connection.heartbeat);
          clearInterval(connection.watchdog);
          clearTimeout(connection.refresher);
          const socket = connection.socket;
          if (socket !== null) {
            socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
            // A silent server may never answer the close handshake: do not wait for it.
            if (socket.readyState <= 1) socket.close(1000);
          }
          this.connection = null;
          this.session = null;
          this.conversations.stop();
          resolve({ code, reason, delayMs, opened: connection.opened });
        },
      };
      this.connection = connection;
      if (this.closing) {
        connection.finish(1000, "client closed", 0);
        return;
      }
      let socket;
      try {
        socket = new this.WebSocket(url, [this.codec.subprotocol]);
      } catch (error) {
        connection.finish(TRANSPORT_LOST, `connecting to ${url} failed: ${error.message}`, 0);
        return;
      }
      connection.socket = socket;
      if (this.codec.binary) socket.binaryType = "arraybuffer";
      // One check per second covers the connect timeout and the server's silence.
      connection.watchdog = setInterval(() => {
        if (Date.now() - connection.lastHeard > connection.timeoutMs) {
          const what = connection.opened ? "server silent" : `connecting to ${url} timed out`;
          connection.finish(TRANSPORT_LOST, `${what} for ${connection.timeoutMs} ms`, 0);
        }
      }, Math.min(1000, this.connectTimeoutMs));
      socket.onopen = () => this.sendConnect(connection);
      socket.onerror = () => {}; // the close event follows and carries what is known
      socket.onclose = (event) => {
        const detail = event.reason ? `: ${event.reason}` : "";
        connection.finish(TRANSPORT_LOST, `connection lost (close code ${event.code}${detail})`, 0);
      };
      socket.onmessage = (event) => {
        connection.lastHeard = Date.now();
        let frame;
        try {
          frame = this.codec.decode(event.data);
        } catch (error) {
          connection.finish(TRANSPORT_LOST, `undecodable frame: ${error.message}`, 0);
          return;
        }
        this.onFrame(connection, frame);
      };
    });
  }

  async sendConnect(connection) {
    let token;
    try {
      token = typeof this.token === "function" ? await this.token() : this.token;
    } catch (error) {
      connection.finish(TRANSPORT_LOST, `token function failed: ${error.message}`, 0);
      return;
    }
    if (connection.done) return;
    this.write(connection, {
      connect: {
        protocolVersion: PROTOCOL_VERSION,
        token,
        deviceId: this.deviceId,
        platform: this.platform,
        clientName: this.clientName,
        status: this.statusFrame,
      },
    });
  }

  onFrame(connection, frame) {
    if (frame.disconnect !== undefined) {
      const { code = 0, reason = "", reconnectDelayMs = 0 } = frame.disconnect;
      connection.finish(code, reason, reconnectDelayMs);
    } else if (frame.connected !== undefined) {
      this.onConnected(connection, frame.connected);
    } else if (frame.heartbeatAck !== undefined) {
      // Only liveness, counted when the message arrived.
    } else if (frame.sendAck !== undefined) {
      const ack = sendAckOf(frame.sendAck);
      this.conversations.onSendAck(ack);
      const entry = this.pending.get(ack.clientMessageId);
      if (entry !== undefined) {
        this.pending.delete(ack.clientMessageId);
        clearTimeout(entry.timer);
        entry.resolve(ack);
      }
    } else if (frame.error !== undefined) {
      const { code = 0, message = "", ref = "" } = frame.error;
      const entry = this.pending.get(ref);
      if (entry !== undefined) {
        this.pending.delete(ref);
        clearTimeout(entry.timer);
        entry.reject(new RequestError(code, message));
      } else if (
        !this.conversations.onError({ code, message, ref }) &&
        !this.groupRequests.onError({ code, message, ref })
      ) {
        this.emit("error", { code, message, ref });
      }
    } else if (frame.deliver !== undefined) {
      for (const message of frame.deliver.messages ?? []) this.conversations.onLive(message);
    } else if (frame.syncResult !== undefined) {
      this.conversations.onSyncResult(frame.syncResult);
    } else if (frame.unread !== undefined) {
      const unread = frame.unread;
      this.conversations.onUnread(unread);
      this.emit("unread", {
        conversations: (unread.conversations ?? []).map((state) => ({
          conversationId: state.conversationId ?? "",
          lastSequence: state.lastSequence ?? 0,
          readSequence: state.readSequence ?? 0,
          unread: Math.max(0, (state.lastSequence ?? 0) - (state.readSequence ?? 0)),
        })),
        truncated: unread.truncated ?? false,
      });
    } else if (frame.presenceUpdate !== undefined) {
      const presence = presenceOf(frame.presenceUpdate.presence ?? {});
      const known = this.presence.get(presence.userId);
      if (known === undefined || known.version <= presence.version) {
        this.presence.set(presence.userId, presence);
        this.emit("presence", presence);
      }
    } else if (frame.presenceSnapshot !== undefined) {
      const contacts = new Map();
      for (const item of frame.presenceSnapshot.contacts ?? []) {
        const presence = presenceOf(item);
        contacts.set(presence.userId, presence);
      }
      this.presence = new Map(contacts);
      this.emit("snapshot", { contacts });
    } else if (frame.contactsChanged !== undefined) {
      const added = frame.contactsChanged.added ?? [];
      const removed = frame.contactsChanged.removed ?? [];
      for (const userId of removed) this.presence.delete(userId);
      this.emit("contacts", { added, removed });
    } else if (frame.groupResult !== undefined) {
      this.groupRequests.onResult(frame.groupResult);
    } else if (frame.groupsChanged !== undefined) {
      const joined = (frame.groupsChanged.joined ?? []).map(groupOf);
      const left = frame.groupsChanged.left ?? [];
      const deleted = frame.groupsChanged.deleted ?? [];
      for (const groupId of left) this.groupOnline.delete(groupId);
      for (const groupId of deleted) this.conversations.forget(`g:${groupId}`);
      this.conversations.onJoined(joined);
      this.emit("groups", { joined, left, deleted });
    } else if (frame.groupCounts !== undefined) {
      for (const item of frame.groupCounts.counts ?? []) {
        const count = groupCountOf(item);
        this.groupOnline.set(count.groupId, count);
        this.emit("groupOnline", count);
      }
    } else if (frame.refreshed !== undefined) {
      const tokenExpiresMs = frame.refreshed.tokenExpiresMs ?? 0;
      this.scheduleRefresh(connection, tokenExpiresMs, Date.now());
      this.emit("refreshed", { tokenExpiresMs });
    }
    // Other kinds are ignored, as docs/protocol.md section 9 asks of clients.
  }

  onConnected(connection, connected) {
    connection.opened = true;
    connection.timeoutMs = connected.offlineTimeoutMs || 60_000;
    const session = Object.freeze({
      sessionId: connected.sessionId ?? "",
      userId: connected.userId ?? "",
      heartbeatIntervalMs: connected.heartbeatIntervalMs || 4_000,
      offlineTimeoutMs: connection.timeoutMs,
      serverTimeMs: connected.serverTimeMs ?? 0,
      maxFrameBytes: connected.maxFrameBytes ?? 0,
      maxBodyBytes: connected.maxBodyBytes ?? 0,
      tokenExpiresMs: connected.tokenExpiresMs ?? 0,
    });
    this.session = session;
    connection.heartbeat = setInterval(() => {
      this.nonce += 1;
      this.write(connection, { heartbeat: { nonce: this.nonce } });
    }, session.heartbeatIntervalMs);
    this.scheduleRefresh(connection, session.tokenExpiresMs, session.serverTimeMs);
    this.conversations.connected((frame) => this.write(connection, frame), session.userId);
    for (const entry of this.pending.values()) this.write(connection, { send: entry.send });
    this.groupRequests.resend((frame) => this.write(connection, frame));
    this.setState("open");
    if (this.firstSession?.resolve) {
      this.firstSession.resolve(session);
      this.firstSession = null;
    }
    this.emit("session", session);
  }

  /** With a token function, send Refresh at REFRESH_AT of the time left before expiresMs. */
  scheduleRefresh(connection, expiresMs, nowMs) {
    clearTimeout(connection.refresher);
    if (typeof this.token !== "function" || !expiresMs) return;
    const delay = Math.max(0, (expiresMs - nowMs) * REFRESH_AT);
    connection.refresher = setTimeout(async () => {
      try {
        const token = await this.token();
        if (!connection.done) this.write(connection, { refresh: { token } });
      } catch (error) {
        this.emit("error", { code: 0, message: `token refresh failed: ${error.message}`, ref: "" });
      }
    }, delay);
  }

  /** Close the current connection without a Disconnect frame; the loop reconnects. */
  dropConnection(reason) {
    if (this.connection !== null) this.connection.finish(TRANSPORT_LOST, reason, 0);
  }

  sendFrame(frame) {
    if (this.connection !== null) this.write(this.connection, frame);
  }

  write(connection, frame) {
    const socket = connection.socket;
    if (connection.done || socket === null || socket.readyState !== 1) return;
    socket.send(this.codec.encode(frame));
  }

  setLocalStatus(status) {
    const frame = STATUS_FRAMES[status];
    if (frame === undefined) {
      throw new RangeError(`invalid status ${JSON.stringify(status)}: use ${STATUSES.join(", ")}`);
    }
    this.ownStatus = status;
    this.statusFrame = frame;
  }

  setState(state, extra = {}) {
    if (state === this.state && state !== "reconnecting") return;
    this.state = state;
    this.emit("state", { state, ...extra });
  }

  emit(name, value) {
    const set = this.listeners.get(name);
    if (set === undefined) return;
    for (const listener of [...set]) {
      try {
        listener(value);
      } catch (error) {
        // A failing listener must not break the connection loop.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  failPending(error) {
    for (const entry of this.pending.values()) {
      clearTimeout(entry.timer);
      entry.reject(error);
    }
    this.pending.clear();
    this.groupRequests.failAll(error);
  }
}
