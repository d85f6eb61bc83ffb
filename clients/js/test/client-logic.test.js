// The client's own decisions, against the in-memory FakeSocket: backoff and the server's
// delay, URL order, resends with the same id, final codes, presence versions.

import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import { TetherClient, backoffDelay, statusName, directConversationId } from "../src/index.js";
import { FakeSocket, connectedFrame, waitFor } from "./fake-socket.js";

beforeEach(() => {
  FakeSocket.opened = [];
});

function newClient(options = {}) {
  return new TetherClient({
    urls: ["ws://a.invalid/ws", "ws://b.invalid/ws"],
    token: "t",
    deviceId: "web",
    WebSocket: FakeSocket,
    backoffInitialMs: 20,
    backoffMaxMs: 100,
    ...options,
  });
}

async function openSession(client) {
  const opened = client.connect();
  await waitFor(() => FakeSocket.opened.length === 1 && FakeSocket.opened[0].sent.length === 1);
  const socket = FakeSocket.opened[0];
  socket.receive(connectedFrame());
  await opened;
  return socket;
}

test("backoffDelay stays between half the first step and the capped exponential bound", () => {
  assert.equal(backoffDelay(0, 500, 30_000, () => 0), 250);
  assert.equal(backoffDelay(0, 500, 30_000, () => 1), 500);
  assert.equal(backoffDelay(3, 500, 30_000, () => 1), 4000);
  assert.equal(backoffDelay(20, 500, 30_000, () => 1), 30_000);
  for (let attempt = 0; attempt < 12; attempt += 1) {
    const delay = backoffDelay(attempt);
    assert.ok(delay >= 250 && delay <= Math.min(30_000, 500 * 2 ** attempt), `${attempt}: ${delay}`);
  }
});

test("statusName and directConversationId follow the protocol's names", () => {
  assert.equal(statusName("STATUS_ONLINE"), "online");
  assert.equal(statusName("STATUS_BUSY"), "busy");
  assert.equal(statusName(9), "unknown"); // an enum value from a newer server
  assert.equal(directConversationId("bob", "alice"), "d:alice:bob");
});

test("Connect carries the token, device, platform and the chosen status", async () => {
  const client = newClient({ status: "busy" });
  const socket = await openSession(client);
  assert.deepEqual(socket.protocols, ["tether.v1.json"]);
  const [connect] = socket.sentOf("connect");
  assert.equal(connect.protocolVersion, 1);
  assert.equal(connect.token, "t");
  assert.equal(connect.deviceId, "web");
  assert.equal(connect.platform, "PLATFORM_WEB");
  assert.deepEqual(connect.status, { mode: "MODE_BUSY" });
  await client.close();
  assert.deepEqual(socket.sentOf("disconnect"), [{ code: 1000, reason: "client closed" }]);
});

test("a reconnect waits at least the server's delay and tries the next URL", async () => {
  const client = newClient();
  const states = [];
  client.on("state", (state) => states.push(state));
  const socket = await openSession(client);
  const started = Date.now();
  socket.receive({ disconnect: { code: 4000, reason: "draining", reconnectDelayMs: 300 } });
  await waitFor(() => FakeSocket.opened.length === 2, 2000, "a second socket");
  assert.ok(Date.now() - started >= 290, `reconnected after ${Date.now() - started} ms`);
  assert.equal(FakeSocket.opened[1].url, "ws://b.invalid/ws");
  const reconnecting = states.find((state) => state.state === "reconnecting");
  assert.ok(reconnecting.delayMs >= 300);
  await client.close();
});

test("unacknowledged sends are resent after a reconnect with the same client_message_id", async () => {
  const client = newClient();
  const first = await openSession(client);
  const sent = client.send("bob", "hello");
  const [original] = first.sentOf("send");
  first.drop();
  await waitFor(() => FakeSocket.opened.length === 2 && FakeSocket.opened[1].sent.length === 1);
  const second = FakeSocket.opened[1];
  second.receive(connectedFrame());
  await waitFor(() => second.sentOf("send").length === 1, 2000, "the resend");
  const [resent] = second.sentOf("send");
  assert.equal(resent.clientMessageId, original.clientMessageId);
  assert.equal(new TextDecoder().decode(resent.body), "hello");
  second.receive({
    sendAck: {
      clientMessageId: original.clientMessageId,
      messageId: "7",
      conversationId: "d:alice:bob",
      sequence: "1",
    },
  });
  const ack = await sent;
  assert.equal(ack.messageId, 7);
  assert.equal(ack.sequence, 1);
  await client.close();
});

test("a final code stops the client and fails what is pending", async () => {
  const client = newClient();
  const socket = await openSession(client);
  const sent = client.send("bob", "x");
  const disconnects = [];
  client.on("disconnect", (event) => disconnects.push(event));
  socket.receive({ disconnect: { code: 4504, reason: "replaced" } });
  await assert.rejects(sent, { name: "ConnectionClosed", code: 4504 });
  assert.deepEqual(disconnects, [{ code: 4504, reason: "replaced", reconnecting: false, reconnectDelayMs: 0 }]);
  assert.equal(client.state, "closed");
  assert.equal(FakeSocket.opened.length, 1);
});

test("an unknown code from 4000 to 4499 reconnects", async () => {
  const client = newClient();
  const socket = await openSession(client);
  socket.receive({ disconnect: { code: 4321, reason: "newer server" } });
  await waitFor(() => FakeSocket.opened.length === 2, 2000, "a reconnect");
  await client.close();
});

test("TOKEN_EXPIRED is final with a fixed token and retried with a token function", async () => {
  const fixed = newClient();
  const fixedSocket = await openSession(fixed);
  fixedSocket.receive({ disconnect: { code: 4503, reason: "expired" } });
  await waitFor(() => fixed.state === "closed", 2000, "the client to stop");
  assert.equal(FakeSocket.opened.length, 1);
  FakeSocket.opened = [];

  let calls = 0;
  const client = newClient({ token: async () => `token-${++calls}` });
  const socket = await openSession(client);
  socket.receive({ disconnect: { code: 4503, reason: "expired" } });
  await waitFor(() => FakeSocket.opened.length === 2 && FakeSocket.opened[1].sent.length === 1);
  assert.equal(FakeSocket.opened[1].sentOf("connect")[0].token, "token-2");
  await client.close();
});

test("presence updates older than the stored version are dropped", async () => {
  const client = newClient();
  const socket = await openSession(client);
  const seen = [];
  client.on("presence", (presence) => seen.push(presence));
  socket.receive({
    presenceSnapshot: { contacts: [{ userId: "bob", status: "STATUS_ONLINE", version: "5" }] },
  });
  socket.receive({ presenceUpdate: { presence: { userId: "bob", status: "STATUS_AWAY", version: "4" } } });
  socket.receive({
    presenceUpdate: {
      presence: { userId: "bob", status: "STATUS_OFFLINE", version: "6", lastSeenMs: "1767225600000" },
    },
  });
  assert.deepEqual(seen, [{ userId: "bob", status: "offline", lastSeenMs: 1767225600000, version: 6 }]);
  assert.equal(client.presence.get("bob").status, "offline");
  await client.close();
});

test("a server that stays silent past the connect timeout is left", async () => {
  const client = newClient({ connectTimeoutMs: 200, reconnect: false });
  await assert.rejects(client.connect(), /timed out|no session/);
});

test("Refresh at REFRESH_AT of the token's lifetime", async () => {
  const tokens = [];
  const client = newClient({
    token: async () => {
      tokens.push(`token-${tokens.length + 1}`);
      return tokens.at(-1);
    },
  });
  const refreshed = [];
  client.on("refreshed", (event) => refreshed.push(event));
  const opened = client.connect();
  await waitFor(() => FakeSocket.opened.length === 1 && FakeSocket.opened[0].sent.length === 1);
  const socket = FakeSocket.opened[0];
  const now = Date.now();
  socket.receive(connectedFrame("alice", { serverTimeMs: String(now), tokenExpiresMs: String(now + 500) }));
  await opened;
  assert.deepEqual(socket.sentOf("refresh"), []);
  await waitFor(() => socket.sentOf("refresh").length === 1, 2000, "the first Refresh");
  // 80 % of the 500 ms left, not earlier (timers may fire a little late, never early).
  assert.ok(Date.now() - now >= 390, `refreshed after ${Date.now() - now} ms`);
  assert.deepEqual(socket.sentOf("refresh"), [{ token: "token-2" }]);

  // Refreshed starts the next round from the new expiry.
  const second = Date.now();
  socket.receive({ refreshed: { tokenExpiresMs: String(second + 300) } });
  assert.deepEqual(refreshed, [{ tokenExpiresMs: second + 300 }]);
  await waitFor(() => socket.sentOf("refresh").length === 2, 2000, "the second Refresh");
  assert.ok(Date.now() - second >= 230, `refreshed again after ${Date.now() - second} ms`);
  assert.deepEqual(socket.sentOf("refresh")[1], { token: "token-3" });
  assert.equal(FakeSocket.opened.length, 1); // all on one connection
  await client.close();
});

test("Refresh only with a token function and a token that expires", async () => {
  const fixed = newClient();
  const fixedSocket = await openSession(fixed);
  fixedSocket.receive({ refreshed: { tokenExpiresMs: String(Date.now() + 50) } });
  const forever = newClient({ token: async () => "t" });
  FakeSocket.opened = [];
  const foreverSocket = await openSession(forever); // connectedFrame has no tokenExpiresMs
  await new Promise((resolve) => setTimeout(resolve, 150));
  assert.deepEqual(fixedSocket.sentOf("refresh"), []);
  assert.deepEqual(foreverSocket.sentOf("refresh"), []);
  await fixed.close();
  await forever.close();
});

test("a token function failing at refresh time is reported", async () => {
  let calls = 0;
  const failing = newClient({
    token: async () => {
      calls += 1;
      if (calls > 1) throw new Error("token service down");
      return "t";
    },
  });
  const errors = [];
  failing.on("error", (error) => errors.push(error));
  const opened = failing.connect();
  await waitFor(() => FakeSocket.opened.length === 1 && FakeSocket.opened[0].sent.length === 1);
  const now = Date.now();
  FakeSocket.opened[0].receive(connectedFrame("alice", { serverTimeMs: String(now), tokenExpiresMs: String(now + 100) }));
  await opened;
  await waitFor(() => errors.length === 1, 2000, "the refresh error");
  assert.match(errors[0].message, /token refresh failed: token service down/);
  assert.equal(failing.state, "open"); // the session goes on until the server ends it
  assert.deepEqual(FakeSocket.opened[0].sentOf("refresh"), []);
  await failing.close();
});
