/**
 * The `tether.v1` codec: each frame is one binary WebSocket message holding a serialized
 * `tether.v1.Frame`, encoded and decoded by protobufjs from the text of tether.proto.
 *
 * The schema is parsed at run time from the same file the server is generated from, so the
 * two cannot drift apart and nothing generated needs to be kept fresh. In Node,
 * `loadProtobufCodec()` from `./node.js` reads the repository's copy; a page or a bundler
 * passes the file's text to `createProtobufCodec`.
 */

import protobuf from "protobufjs";

// Objects in the shape the JSON codec produces: 64-bit integers as numbers, enums by name.
const TO_OBJECT = Object.freeze({ longs: Number, enums: String });

/** Return the binary codec for the schema in protoSource, the text of tether.proto. */
export function createProtobufCodec(protoSource) {
  const root = protobuf.parse(protoSource).root;
  const Frame = root.lookupType("tether.v1.Frame");
  return Object.freeze({
    subprotocol: "tether.v1",
    binary: true,
    /** Return the binary message for a frame object. */
    encode(frame) {
      return Frame.encode(Frame.fromObject(frame)).finish();
    },
    /** Return the frame object in a binary message (an ArrayBuffer or a Uint8Array). */
    decode(data) {
      if (typeof data === "string") throw new TypeError("expected a binary message on tether.v1");
      const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
      return Frame.toObject(Frame.decode(bytes), TO_OBJECT);
    },
    /** The protobufjs type of Frame, for tests and tools. */
    Frame,
  });
}
