// The client against a real `tether serve` on free ports, once per codec: presence, status
// changes, messages both ways, catch-up by sequence, groups with online counts, token
// refresh, reconnects and resends.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import WebSocket from "ws";

import { TetherClient, jsonCodec } from "../src/index.js";
import { loadProtobufCodec } from "../src/node.js";
import { waitFor } from "./fake-socket.js";
import { TIMEOUT_MS, startServer, tokenFor } from "./server.js";

const CODECS = { binary: loadProtobufCodec(), json: jsonCodec };

/** Collects a client's events by name, for waiting on them. */
class Recorder {
  constructor(client, names) {
    this.events = [];
    for (const name of names) client.on(name, (value) => this.events.push({ name, value }));
  }

  of(name) {
    return this.events.filter((event) => event.name === name).map((event) => event.value);
  }

  async next(name, predicate = () => true, what = name) {
    let found;
    await waitFor(
      () => {
        found = this.of(name).find(predicate);
        return found !== undefined;
      },
      TIMEOUT_MS,
      what,
    );
    return found;
  }
}

const EVENTS = [
  "state",
  "session",
  "snapshot",
  "presence",
  "message",
  "disconnect",
  "unread",
  "error",
  "groups",
  "groupOnline",
  "refreshed",
];
// Every group gets online counts, sent at most every 200 ms.
const GROUP_COUNTS = ["--group-count-threshold", "0", "--group-count-interval", "0.2"];

for (const [codecName, codec] of Object.entries(CODECS)) {
  describe(`against tether serve, ${codec.subprotocol}`, () => {
    let server;
    const clients = [];

    before(async () => {
      server = await startServer(GROUP_COUNTS);
      await server.addContacts("alice", "bob");
    });

    after(async () => {
      for (const client of clients) await client.close();
      await server?.stop();
    });

    function open(user, options = {}) {
      const client = new TetherClient({
        url: server.wsUrl,
        token: tokenFor(user),
        deviceId: options.deviceId ?? `${codecName}-${user}`,
        codec,
        WebSocket,
        connectTimeoutMs: TIMEOUT_MS,
        ackTimeoutMs: TIMEOUT_MS,
        ...options,
      });
      clients.push(client);
      return { client, events: new Recorder(client, EVENTS) };
    }

    test("heartbeats follow the server, presence and status changes reach the contact", async () => {
      const bob = open("bob");
      const session = await bob.client.connect();
      assert.equal(session.userId, "bob");
      assert.equal(session.heartbeatIntervalMs, 500);
      const snapshot = await bob.events.next("snapshot");
      assert.equal(snapshot.contacts.get("alice").status, "offline");

      const alice = open("alice");
      await alice.client.connect();
      await bob.events.next("presence", (p) => p.userId === "alice" && p.status === "online", "alice online");
      alice.client.setStatus("away");
      await bob.events.next("presence", (p) => p.status === "away", "alice away");
      alice.client.setStatus("busy");
      await bob.events.next("presence", (p) => p.status === "busy", "alice busy");
      alice.client.setStatus("invisible");
      const hidden = await bob.events.next("presence", (p) => p.status === "offline", "alice invisible");
      assert.ok(hidden.lastSeenMs > 0);
      alice.client.setStatus("online");
      await bob.events.next("presence", (p) => p.version > hidden.version && p.status === "online", "back");

      // Two heartbeat intervals pass without a close: the answers keep the link alive.
      await new Promise((resolve) => setTimeout(resolve, 1200));
      assert.equal(alice.client.state, "open");
      const sessionsBefore = alice.events.of("session").length;
      await alice.client.close();
      const gone = await bob.events.next(
        "presence",
        (p) => p.status === "offline" && p.version > hidden.version,
        "alice offline after close",
      );
      assert.ok(gone.lastSeenMs >= hidden.lastSeenMs);
      assert.equal(sessionsBefore, 1);
      await bob.client.close();
    });

    test("messages travel both ways and are acknowledged once stored", async () => {
      const alice = open("alice", { deviceId: `${codecName}-alice-2` });
      const bob = open("bob", { deviceId: `${codecName}-bob-2` });
      await alice.client.connect();
      await bob.client.connect();
      const ack = await alice.client.send("bob", "hi bob ✓");
      assert.equal(ack.conversationId, "d:alice:bob");
      const received = await bob.events.next("message", (m) => m.messageId === ack.messageId);
      assert.equal(received.text, "hi bob ✓");
      assert.equal(received.sender, "alice");
      const reply = await bob.client.send("alice", new Uint8Array([0, 1, 2, 255]));
      const back = await alice.events.next("message", (m) => m.messageId === reply.messageId);
      assert.deepEqual([...back.body], [0, 1, 2, 255]);
      await assert.rejects(alice.client.send("carol", "x"), { name: "RequestError", code: 2 });
      await alice.client.close();
      await bob.client.close();
    });

    test("a device that was away catches up in order, once, across Sync pages", async () => {
      const alice = open("alice", { deviceId: `${codecName}-alice-3` });
      await alice.client.connect();
      const acks = [];
      for (let index = 0; index < 130; index += 1) acks.push(alice.client.send("bob", `m${index}`));
      const stored = await Promise.all(acks);
      const bob = open("bob", { deviceId: `${codecName}-bob-3` });
      await bob.client.connect();
      await waitFor(
        () => bob.events.of("message").length >= 130 + 2, // earlier tests' messages too
        2 * TIMEOUT_MS,
        "the catch-up",
      );
      const texts = bob.events.of("message").filter((m) => m.sender === "alice").map((m) => m.text);
      assert.deepEqual(texts.slice(-130), stored.map((_, index) => `m${index}`));
      const sequences = bob.events.of("message").map((m) => m.sequence);
      assert.deepEqual(sequences, [...new Set(sequences)].sort((a, b) => a - b));
      const [unread] = bob.events.of("unread");
      assert.ok(unread.conversations[0].unread >= 130);
      await new Promise((resolve) => setTimeout(resolve, 500)); // acks go out every 100 ms
      await bob.client.close();

      // The same device again: its read marker was moved, so nothing is handed over twice.
      const again = open("bob", { deviceId: `${codecName}-bob-3` });
      await again.client.connect();
      const [nothing] = [await again.events.next("unread")];
      assert.deepEqual(nothing.conversations, []);
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.equal(again.events.of("message").length, 0);
      await again.client.close();
      await alice.client.close();
    });

    test("group membership, messages and online counts", async () => {
      const alice = open("alice", { deviceId: `${codecName}-alice-4` });
      const bob = open("bob", { deviceId: `${codecName}-bob-4` });
      await alice.client.connect();
      await bob.client.connect();
      const group = await alice.client.createGroup("team", ["bob"]);
      const { incarnation, ...fields } = group;
      assert.deepEqual(fields, { groupId: "team", conversationId: "g:team", owner: "alice", memberCount: 2 });
      assert.ok(incarnation > 0, `incarnation ${incarnation}`); // the creation event's message id
      const changed = await bob.events.next("groups", (event) => event.joined.length > 0, "bob joins");
      assert.deepEqual(changed.joined, [group]);
      await bob.events.next("groupOnline", (count) => count.online === 2, "2 of 2 online");
      assert.deepEqual(bob.client.groupOnline.get("team"), { groupId: "team", online: 2, memberCount: 2 });

      const ack = await alice.client.sendToGroup("team", "hello team");
      assert.equal(ack.conversationId, "g:team");
      const message = await bob.events.next("message", (m) => m.messageId === ack.messageId, "the group message");
      assert.equal(message.text, "hello team");
      assert.equal(message.recipient, "g:team");
      assert.equal(message.sender, "alice");
      assert.equal(bob.events.of("session").length, 1); // pushed live, not caught up after a reconnect

      await alice.client.close();
      const down = await bob.events.next("groupOnline", (count) => count.online === 1, "1 of 2 online");
      assert.equal(down.memberCount, 2);
      assert.deepEqual((await bob.client.listGroups()).map((g) => g.groupId), ["team"]);
      await assert.rejects(bob.client.addGroupMembers("team", ["carol"]), { name: "RequestError", code: 7 });
      await bob.client.leaveGroup("team");
      assert.deepEqual(await bob.client.listGroups(), []);
      await bob.client.close();
    });
  });
}

describe("token refresh against a real server", () => {
  let server;

  before(async () => {
    server = await startServer();
  });

  after(async () => {
    await server?.stop();
  });

  test("a token function keeps a session open past its first token's expiry", async (t) => {
    // Tokens live 3 s (2 to 3, as JWT times are whole seconds). The server closes a session
    // with TOKEN_EXPIRED once its token is past expiry and the server's 5 s leeway.
    const issued = [];
    const refreshing = new TetherClient({
      url: server.wsUrl,
      token: () => {
        issued.push(Date.now());
        return tokenFor("alice", { expiresInS: 3 });
      },
      deviceId: "refreshing",
      WebSocket,
      connectTimeoutMs: TIMEOUT_MS,
    });
    const fixed = new TetherClient({
      url: server.wsUrl,
      token: tokenFor("bob", { expiresInS: 3 }),
      deviceId: "fixed",
      WebSocket,
      connectTimeoutMs: TIMEOUT_MS,
    });
    const events = new Recorder(refreshing, EVENTS);
    const fixedEvents = new Recorder(fixed, EVENTS);
    // Closed whatever happens: a refreshing client would otherwise reconnect forever.
    t.after(() => Promise.all([refreshing.close(), fixed.close()]));
    const [session] = await Promise.all([refreshing.connect(), fixed.connect()]);
    assert.ok(session.tokenExpiresMs > 0);

    // The fixed token's session is closed, so the server enforces expiry on this run.
    await waitFor(() => fixedEvents.of("disconnect").length > 0, 3 * TIMEOUT_MS, "TOKEN_EXPIRED");
    const [expired] = fixedEvents.of("disconnect");
    assert.equal(expired.code, 4503);
    assert.equal(expired.reconnecting, false);

    // By then the refreshing session has sent Refresh several times, on one connection.
    const refreshed = events.of("refreshed");
    assert.ok(refreshed.length >= 2, `${refreshed.length} Refreshed frames`);
    assert.ok(refreshed.at(-1).tokenExpiresMs > session.tokenExpiresMs);
    assert.equal(issued.length, 1 + refreshed.length);
    assert.equal(refreshing.state, "open");
    assert.equal(events.of("session").length, 1);
    assert.deepEqual(events.of("disconnect"), []);
  });
});

describe("reconnects between two real servers", () => {
  let first;
  let second;

  before(async () => {
    [first, second] = await Promise.all([
      startServer(["--reconnect-spread", "0.4"]),
      startServer(),
    ]);
    await Promise.all([first.addContacts("alice", "bob"), second.addContacts("alice", "bob")]);
  });

  after(async () => {
    await first?.stop();
    await second?.stop();
  });

  test("SHUTDOWN moves the client to the next URL after the server's delay; sends wait and go", async () => {
    const client = new TetherClient({
      urls: [first.wsUrl, second.wsUrl],
      token: tokenFor("alice"),
      deviceId: "roamer",
      codec: CODECS.binary,
      WebSocket,
      backoffInitialMs: 50,
      connectTimeoutMs: TIMEOUT_MS,
      ackTimeoutMs: 3 * TIMEOUT_MS,
    });
    const events = new Recorder(client, EVENTS);
    const firstSession = await client.connect();
    await first.stop();
    const shutdown = await events.next("disconnect");
    assert.equal(shutdown.code, 4000);
    assert.equal(shutdown.reconnecting, true);
    assert.ok(shutdown.reconnectDelayMs <= 400);
    // Sent between sessions: kept, and sent on the next session with its id.
    const sent = client.send("bob", "while away", { clientMessageId: "roam-1" });
    const reconnecting = await events.next("state", (s) => s.state === "reconnecting");
    assert.ok(reconnecting.delayMs >= shutdown.reconnectDelayMs);
    const ack = await sent;
    assert.equal(ack.clientMessageId, "roam-1");
    const sessions = events.of("session");
    assert.equal(sessions.length, 2);
    assert.notEqual(sessions[1].sessionId, firstSession.sessionId);
    assert.equal(client.urlIndex, 1);
    // The server keeps one message per client_message_id: a resend gets the same ack.
    const again = await client.send("bob", "while away", { clientMessageId: "roam-1" });
    assert.equal(again.messageId, ack.messageId);
    await client.close();
  });
});
