// Order, deduplication and catch-up of Conversations, with the frames it sends captured and
// the server's answers given by hand (docs/protocol.md, section 4.5).

import assert from "node:assert/strict";
import { test } from "node:test";

import { Conversations } from "../src/catchup.js";
import { waitFor } from "./fake-socket.js";

function message(sequence, sender = "bob", conversationId = "d:alice:bob") {
  return { conversationId, sequence, sender, senderDevice: "phone", body: new Uint8Array() };
}

function setUp() {
  const delivered = [];
  const sent = [];
  const conversations = new Conversations({
    deliver: (item) => delivered.push(item.sequence),
    deviceId: "web",
    requestTimeoutMs: 1000,
  });
  conversations.connected((frame) => sent.push(frame), "alice");
  const syncs = () => sent.filter((frame) => frame.sync).map((frame) => frame.sync);
  const answer = (sync, sequences, hasMore = false) =>
    conversations.onSyncResult({
      requestId: sync.requestId,
      conversationId: sync.conversationId,
      messages: sequences.map((sequence) => message(sequence)),
      hasMore,
    });
  return { conversations, delivered, sent, syncs, answer };
}

test("live messages in order are handed over at once, duplicates dropped, then acknowledged", async () => {
  const { conversations, delivered, sent } = setUp();
  conversations.onUnread({ conversations: [{ conversationId: "d:alice:bob", lastSequence: 2, readSequence: 2 }] });
  conversations.onLive(message(3));
  conversations.onLive(message(3));
  conversations.onLive(message(2));
  conversations.onLive(message(4));
  assert.deepEqual(delivered, [3, 4]);
  await waitFor(() => sent.some((frame) => frame.deliverAck), 1000, "an ack");
  assert.deepEqual(
    sent.filter((frame) => frame.deliverAck).map((frame) => frame.deliverAck),
    [{ conversationId: "d:alice:bob", sequence: 4 }],
  );
  conversations.stop();
});

test("a gap holds live messages while Sync fetches the missing ones, oldest first", async () => {
  const { conversations, delivered, syncs, answer } = setUp();
  conversations.onUnread({ conversations: [{ conversationId: "d:alice:bob", lastSequence: 1, readSequence: 1 }] });
  conversations.onLive(message(5));
  conversations.onLive(message(6));
  await waitFor(() => syncs().length === 1, 1000, "a Sync");
  const [sync] = syncs();
  assert.equal(sync.afterSequence, 1);
  assert.equal(sync.fromReadMarker, false);
  answer(sync, [2, 3, 4, 5]);
  await waitFor(() => delivered.length === 5, 1000, "five messages");
  assert.deepEqual(delivered, [2, 3, 4, 5, 6]);
  conversations.stop();
});

test("Unread queues a fetch in pages until has_more is false", async () => {
  const { conversations, delivered, syncs, answer } = setUp();
  conversations.onUnread({ conversations: [{ conversationId: "d:alice:bob", lastSequence: 150, readSequence: 0 }] });
  await waitFor(() => syncs().length === 1, 1000, "the first page");
  answer(syncs()[0], Array.from({ length: 100 }, (_, index) => index + 1), true);
  await waitFor(() => syncs().length === 2, 1000, "the second page");
  assert.equal(syncs()[1].afterSequence, 100);
  answer(syncs()[1], Array.from({ length: 50 }, (_, index) => index + 101));
  await waitFor(() => delivered.length === 150, 1000, "150 messages");
  assert.deepEqual(delivered, Array.from({ length: 150 }, (_, index) => index + 1));
  conversations.stop();
});

test("a first live message of an unknown conversation is fetched from the read marker", async () => {
  const { conversations, delivered, syncs, answer } = setUp();
  conversations.onLive(message(3));
  await waitFor(() => syncs().length === 1, 1000, "a Sync");
  assert.equal(syncs()[0].fromReadMarker, true);
  answer(syncs()[0], [2, 3]);
  await waitFor(() => delivered.length === 2, 1000, "two messages");
  assert.deepEqual(delivered, [2, 3]);
  conversations.stop();
});

test("this device's own messages advance the position but are not handed over again", async () => {
  const { conversations, delivered } = setUp();
  conversations.onSendAck({ conversationId: "d:alice:bob", sequence: 1 });
  conversations.onLive({ ...message(2), sender: "alice", senderDevice: "other" });
  conversations.onLive({ ...message(3), sender: "alice", senderDevice: "web" });
  conversations.onLive(message(4));
  assert.deepEqual(delivered, [2, 4]);
  conversations.stop();
});

test("a failed Sync reports the failure so the client reconnects", async () => {
  const failures = [];
  const sent = [];
  const conversations = new Conversations({
    deliver: () => {},
    deviceId: "web",
    requestTimeoutMs: 1000,
    onFailure: (error) => failures.push(error),
  });
  conversations.connected((frame) => sent.push(frame), "alice");
  conversations.onLive(message(2));
  await waitFor(() => sent.some((frame) => frame.sync), 1000, "a Sync");
  const { requestId } = sent.find((frame) => frame.sync).sync;
  assert.equal(conversations.onError({ code: 3, message: "logic down", ref: requestId }), true);
  await waitFor(() => failures.length === 1, 1000, "the failure");
  assert.equal(failures[0].code, 3);
  conversations.stop();
});

test("a group the user left before its Sync is skipped without a reconnect", async () => {
  const failures = [];
  const sent = [];
  const conversations = new Conversations({
    deliver: () => {},
    deviceId: "web",
    requestTimeoutMs: 1000,
    onFailure: (error) => failures.push(error),
  });
  conversations.connected((frame) => sent.push(frame), "alice");
  conversations.onLive(message(3, "bob", "g:team"));
  conversations.onLive(message(2, "bob", "d:alice:bob"));
  await waitFor(() => sent.some((frame) => frame.sync), 1000, "a Sync");
  const first = sent.find((frame) => frame.sync).sync;
  assert.equal(first.conversationId, "g:team");
  conversations.onError({ code: 6, message: "no conversation 'g:team' of this user", ref: first.requestId });
  // The next conversation is fetched on the same connection.
  await waitFor(() => sent.filter((frame) => frame.sync).length === 2, 1000, "the second Sync");
  assert.equal(sent.filter((frame) => frame.sync)[1].sync.conversationId, "d:alice:bob");
  assert.deepEqual(failures, []);
  conversations.stop();
});

test("forget drops a deleted group's position, so a new group of that id starts at 1", async () => {
  const { conversations, delivered } = setUp();
  conversations.onUnread({ conversations: [{ conversationId: "g:team", lastSequence: 5, readSequence: 5 }] });
  conversations.onLive(message(6, "bob", "g:team"));
  conversations.onLive(message(1, "bob", "g:team")); // the old group's: a duplicate
  assert.deepEqual(delivered, [6]);
  conversations.forget("g:team");
  conversations.onLive(message(1, "bob", "g:team")); // the new group's first message
  conversations.onLive(message(2, "bob", "g:team"));
  assert.deepEqual(delivered, [6, 1, 2]);
  conversations.stop();
});

test("a new incarnation in Unread or a SyncResult forgets the old group's position", async () => {
  const { conversations, delivered, sent, syncs } = setUp();
  const group = (sequence) => message(sequence, "bob", "g:team");
  const answer = (sync, sequences, incarnation) =>
    conversations.onSyncResult({
      requestId: sync.requestId,
      conversationId: "g:team",
      messages: sequences.map(group),
      incarnation,
    });
  conversations.onUnread({
    conversations: [{ conversationId: "g:team", lastSequence: 5, readSequence: 5, incarnation: 7 }],
  });
  conversations.onLive(group(6));
  assert.deepEqual(delivered, [6]);

  // Offline meanwhile: the group was deleted and created again, and has 3 messages.
  conversations.connected((frame) => sent.push(frame), "alice");
  conversations.onUnread({
    conversations: [{ conversationId: "g:team", lastSequence: 3, readSequence: 0, incarnation: 9 }],
  });
  await waitFor(() => syncs().length === 1, 1000, "a Sync of the new group");
  assert.equal(syncs()[0].afterSequence, 0);
  answer(syncs()[0], [1, 2, 3], 9);
  await waitFor(() => delivered.length === 4, 1000, "the new group's messages");
  assert.deepEqual(delivered, [6, 1, 2, 3]);

  // Created once more, and only a SyncResult shows it: the page is dropped and fetched again.
  conversations.onLive(group(6));
  await waitFor(() => syncs().length === 2, 1000, "a Sync of the gap");
  assert.equal(syncs()[1].afterSequence, 3);
  answer(syncs()[1], [4, 5], 11);
  await waitFor(() => syncs().length === 3, 1000, "a Sync from the read marker");
  assert.equal(syncs()[2].fromReadMarker, true);
  answer(syncs()[2], [1, 2], 11);
  await waitFor(() => delivered.length === 6, 1000, "the newest group's messages");
  assert.deepEqual(delivered, [6, 1, 2, 3, 1, 2]);
  conversations.stop();
});
