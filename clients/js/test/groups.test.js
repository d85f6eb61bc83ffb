// The client's group requests and group events, against the in-memory FakeSocket: requests
// matched to results and errors by request id, resent after a reconnect, and the events for
// GroupsChanged and GroupCounts. test/server.test.js runs the same against a real server.

import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import { TetherClient } from "../src/index.js";
import { FakeSocket, connectedFrame, waitFor } from "./fake-socket.js";

beforeEach(() => {
  FakeSocket.opened = [];
});

async function openClient() {
  const client = new TetherClient({
    url: "ws://gateway.invalid/ws",
    token: "t",
    deviceId: "web",
    WebSocket: FakeSocket,
    backoffInitialMs: 20,
    backoffMaxMs: 40,
    ackTimeoutMs: 2000,
  });
  const opened = client.connect();
  await waitFor(() => FakeSocket.opened.length === 1 && FakeSocket.opened[0].sent.length === 1);
  FakeSocket.opened[0].receive(connectedFrame("alice"));
  await opened;
  return { client, socket: FakeSocket.opened[0] };
}

test("createGroup sends a GroupRequest and resolves with the group of its GroupResult", async () => {
  const { client, socket } = await openClient();
  const created = client.createGroup("team", ["bob", "carol"]);
  const [request] = socket.sentOf("groupRequest");
  assert.equal(request.action, "GROUP_ACTION_CREATE");
  assert.equal(request.groupId, "team");
  assert.deepEqual(request.userIds, ["bob", "carol"]);
  assert.match(request.requestId, /^group-[0-9a-f]{8}-1$/);
  socket.receive({
    groupResult: {
      requestId: request.requestId,
      groups: [{ groupId: "team", conversationId: "g:team", owner: "alice", memberCount: 3, incarnation: 41 }],
      changed: ["alice", "bob", "carol"],
    },
  });
  assert.deepEqual(await created, {
    groupId: "team",
    conversationId: "g:team",
    owner: "alice",
    memberCount: 3,
    incarnation: 41,
  });

  const listed = client.listGroups();
  const list = socket.sentOf("groupRequest")[1];
  assert.equal(list.action, "GROUP_ACTION_LIST");
  assert.equal(list.groupId, "");
  assert.notEqual(list.requestId, request.requestId);
  socket.receive({ groupResult: { requestId: list.requestId, groups: [{ groupId: "team", owner: "alice" }] } });
  const [team] = await listed;
  assert.equal(team.conversationId, "g:team"); // filled in from the id when left out
  assert.equal(team.memberCount, 0);
  assert.equal(team.incarnation, 0);
  await client.close();
});

test("an Error frame fails the group request it names and no other", async () => {
  const { client, socket } = await openClient();
  const errors = [];
  client.on("error", (error) => errors.push(error));
  const adding = client.addGroupMembers("team", ["dave"]);
  const leaving = client.leaveGroup("other");
  const [add, leave] = socket.sentOf("groupRequest");
  assert.equal(add.action, "GROUP_ACTION_ADD");
  assert.equal(leave.action, "GROUP_ACTION_REMOVE");
  assert.equal(leave.groupId, "other");
  assert.deepEqual(leave.userIds, ["alice"]); // the session's own user
  socket.receive({ error: { code: 7, message: "only the owner adds members", ref: add.requestId } });
  await assert.rejects(adding, { name: "RequestError", code: 7 });
  socket.receive({ error: { code: 1, message: "something else", ref: "not-a-request" } });
  assert.deepEqual(errors, [{ code: 1, message: "something else", ref: "not-a-request" }]);
  socket.receive({ groupResult: { requestId: leave.requestId, groups: [], changed: ["alice"] } });
  await leaving;
  await client.close();
});

test("an unanswered group request is resent after a reconnect", async () => {
  const { client, socket } = await openClient();
  const removing = client.removeGroupMembers("team", ["bob"]);
  const [original] = socket.sentOf("groupRequest");
  socket.drop();
  await waitFor(() => FakeSocket.opened.length === 2 && FakeSocket.opened[1].sent.length === 1, 2000, "a reconnect");
  const second = FakeSocket.opened[1];
  assert.deepEqual(second.sentOf("groupRequest"), []); // not before the session opens
  second.receive(connectedFrame("alice"));
  await waitFor(() => second.sentOf("groupRequest").length === 1, 2000, "the resend");
  assert.deepEqual(second.sentOf("groupRequest")[0], original);
  second.receive({ groupResult: { requestId: original.requestId, changed: ["bob"] } });
  assert.deepEqual(await removing, ["bob"]);
  await client.close();
});

test("close fails the group requests still waiting", async () => {
  const { client } = await openClient();
  const listed = client.listGroups();
  await client.close();
  await assert.rejects(listed, { name: "ConnectionClosed", code: 1000 });
});

test("GroupsChanged and GroupCounts become groups and groupOnline events", async () => {
  const { client, socket } = await openClient();
  const groups = [];
  const counts = [];
  client.on("groups", (event) => groups.push(event));
  client.on("groupOnline", (event) => counts.push(event));
  socket.receive({
    groupsChanged: { joined: [{ groupId: "big", conversationId: "g:big", owner: "bob", memberCount: 150 }] },
  });
  assert.deepEqual(groups, [
    {
      joined: [{ groupId: "big", conversationId: "g:big", owner: "bob", memberCount: 150, incarnation: 0 }],
      left: [],
      deleted: [],
    },
  ]);
  socket.receive({
    groupCounts: {
      counts: [
        { groupId: "big", online: 12, memberCount: 150 },
        { groupId: "huge", memberCount: 900 }, // proto3 JSON leaves online: 0 out
      ],
    },
  });
  assert.deepEqual(counts, [
    { groupId: "big", online: 12, memberCount: 150 },
    { groupId: "huge", online: 0, memberCount: 900 },
  ]);
  assert.equal(client.groupOnline.get("big").online, 12);
  socket.receive({ groupsChanged: { left: ["big"] } });
  assert.deepEqual(groups[1], { joined: [], left: ["big"], deleted: [] });
  assert.equal(client.groupOnline.has("big"), false);
  assert.equal(client.groupOnline.get("huge").memberCount, 900);
  await client.close();
});

/** Return a message of bob's in the group "team". */
function teamMessage(sequence, text) {
  return {
    conversationId: "g:team",
    recipient: "g:team",
    sequence,
    sender: "bob",
    body: new TextEncoder().encode(text),
  };
}

test("a deleted group is in both left and deleted, and a new one of its id starts at 1", async () => {
  const { client, socket } = await openClient();
  const groups = [];
  const texts = [];
  client.on("groups", (event) => groups.push(event));
  client.on("message", (message) => texts.push(message.text));
  socket.receive({ deliver: { messages: [teamMessage(1, "old one"), teamMessage(2, "old two")] } });
  socket.receive({ groupsChanged: { left: ["team"], deleted: ["team"] } });
  assert.deepEqual(groups, [{ joined: [], left: ["team"], deleted: ["team"] }]);
  socket.receive({ deliver: { messages: [teamMessage(1, "new one")] } });
  await waitFor(() => texts.length === 3);
  assert.deepEqual(texts, ["old one", "old two", "new one"]);
  await client.close();
});

test("a member that left learns from the joined group's incarnation that it is new", async () => {
  const { client, socket } = await openClient();
  const texts = [];
  client.on("message", (message) => texts.push(message.text));
  const joined = (incarnation) => ({
    groupsChanged: { joined: [{ groupId: "team", conversationId: "g:team", incarnation }] },
  });
  socket.receive(joined(5));
  socket.receive({ deliver: { messages: [teamMessage(1, "old one"), teamMessage(2, "old two")] } });
  socket.receive({ groupsChanged: { left: ["team"] } });
  socket.receive(joined(5)); // added back to the same group: its position is kept
  socket.receive({ deliver: { messages: [teamMessage(2, "old two")] } });
  socket.receive({ groupsChanged: { left: ["team"] } });
  // Deleted and created again while this user was out: no deletion reached it.
  socket.receive(joined(8));
  socket.receive({ deliver: { messages: [teamMessage(1, "new one")] } });
  await waitFor(() => texts.length === 3);
  assert.deepEqual(texts, ["old one", "old two", "new one"]);
  await client.close();
});

test("a group event becomes a groupEvent, in sequence order with the messages", async () => {
  const { client, socket } = await openClient();
  const seen = [];
  client.on("groupEvent", (event) => seen.push(["groupEvent", event]));
  client.on("message", (message) => seen.push(["message", message]));
  const created = { kind: "GROUP_EVENT_CREATED", actor: "bob", userIds: ["alice", "carol"] };
  socket.receive({
    deliver: {
      messages: [
        { messageId: 7, conversationId: "g:team", sequence: 1, sender: "bob", groupEvent: created },
        {
          messageId: 8,
          conversationId: "g:team",
          sequence: 2,
          sender: "bob",
          recipient: "g:team",
          body: new TextEncoder().encode("welcome"),
        },
      ],
    },
  });
  await waitFor(() => seen.length === 2);
  assert.deepEqual(
    seen.map(([name]) => name),
    ["groupEvent", "message"],
  );
  assert.deepEqual(seen[0][1], {
    groupId: "team",
    conversationId: "g:team",
    sequence: 1,
    kind: "created",
    actor: "bob",
    userIds: ["alice", "carol"],
    timestampMs: 0,
  });
  assert.equal(seen[1][1].text, "welcome");
  assert.equal(seen[1][1].event, null);
  await client.close();
});

test("sendToGroup sends to the group's conversation id", async () => {
  const { client, socket } = await openClient();
  const sent = client.sendToGroup("team", "hello all");
  const [send] = socket.sentOf("send");
  assert.equal(send.recipient, "g:team");
  socket.receive({
    sendAck: { clientMessageId: send.clientMessageId, messageId: "9", conversationId: "g:team", sequence: "4" },
  });
  const ack = await sent;
  assert.equal(ack.conversationId, "g:team");
  assert.equal(ack.sequence, 4);
  await client.close();
});
