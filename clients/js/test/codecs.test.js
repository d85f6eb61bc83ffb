// Both codecs against tether.proto: the JSON codec's field tables, the binary codec's bytes,
// and the same frame objects out of both.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import protobuf from "protobufjs";

import { BYTES_FIELDS, LONG_FIELDS, fromBase64, jsonCodec, toBase64 } from "../src/json-codec.js";
import { PROTO_PATH, loadProtobufCodec } from "../src/node.js";

const binary = loadProtobufCodec();

function fieldsOfType(predicate) {
  const root = protobuf.parse(readFileSync(PROTO_PATH, "utf8")).root;
  const names = new Set();
  for (const type of Object.values(root.lookup("tether.v1").nested)) {
    if (!(type instanceof protobuf.Type)) continue;
    for (const field of type.fieldsArray) if (predicate(field.type)) names.add(field.name);
  }
  return names;
}

test("the JSON codec's 64-bit and bytes field lists match tether.proto", () => {
  const longs = fieldsOfType((type) => ["int64", "uint64", "sint64", "fixed64", "sfixed64"].includes(type));
  assert.deepEqual([...LONG_FIELDS].sort(), [...longs].sort());
  assert.deepEqual([...BYTES_FIELDS].sort(), [...fieldsOfType((type) => type === "bytes")].sort());
  // A name may mean a 64-bit integer in one message only if it means one in every message.
  const others = fieldsOfType((type) => !["int64", "uint64", "bytes"].includes(type));
  for (const name of [...LONG_FIELDS, ...BYTES_FIELDS]) assert.ok(!others.has(name), name);
});

test("the binary codec writes the worked example of docs/protocol.md", () => {
  const bytes = binary.encode({ heartbeat: { nonce: 300 } });
  assert.equal(Buffer.from(bytes).toString("hex"), "1a0308ac02");
  const ack = binary.decode(Buffer.from("220a08ac021080d0eab6b733", "hex"));
  assert.deepEqual(ack, { heartbeatAck: { nonce: 300, serverTimeMs: 1767225600000 } });
});

test("both codecs decode the server's frames to the same objects", () => {
  const frame = {
    deliver: {
      messages: [
        {
          messageId: 12,
          conversationId: "d:alice:bob",
          sequence: 3,
          sender: "bob",
          body: new TextEncoder().encode("hé ✓"),
          timestampMs: 1767225600123,
        },
      ],
    },
  };
  // The canonical JSON the server writes: 64-bit integers as strings, bytes as base64.
  const serverJson = JSON.stringify({
    deliver: {
      messages: [
        {
          messageId: "12",
          conversationId: "d:alice:bob",
          sequence: "3",
          sender: "bob",
          body: toBase64(frame.deliver.messages[0].body),
          timestampMs: "1767225600123",
        },
      ],
    },
  });
  const fromJson = jsonCodec.decode(serverJson);
  const fromBinary = binary.decode(binary.encode(frame));
  assert.deepEqual(fromJson.deliver.messages[0].body, frame.deliver.messages[0].body);
  assert.deepEqual(
    { ...fromJson.deliver.messages[0], body: null },
    { ...fromBinary.deliver.messages[0], body: null },
  );
});

test("the JSON codec writes bytes as base64 and rejects what is not a JSON object", () => {
  const text = jsonCodec.encode({ send: { clientMessageId: "m1", recipient: "bob", body: new Uint8Array([0, 255]) } });
  assert.equal(text, '{"send":{"clientMessageId":"m1","recipient":"bob","body":"AP8="}}');
  assert.deepEqual(fromBase64("AP8"), new Uint8Array([0, 255]));
  assert.deepEqual(fromBase64("_-8="), new Uint8Array([255, 239]));
  assert.throws(() => jsonCodec.decode("[1]"), TypeError);
  assert.throws(() => jsonCodec.decode("{"), SyntaxError);
  assert.throws(() => jsonCodec.decode(new ArrayBuffer(2)), TypeError);
});

test("toBase64 handles bodies larger than one chunk", () => {
  const bytes = new Uint8Array(100_000).map((_, index) => index % 251);
  assert.deepEqual(fromBase64(toBase64(bytes)), bytes);
});
