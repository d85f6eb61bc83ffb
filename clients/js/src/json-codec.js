/**
 * The `tether.v1.json` codec: each frame is one WebSocket text message holding Protobuf's
 * canonical JSON mapping of a `tether.v1.Frame` (lowerCamelCase field names, enum values by
 * name, 64-bit integers as strings, bytes as base64). It needs no Protobuf library, so a page
 * can use it as it is, and its frames read plainly in the browser's developer tools.
 *
 * The client works on plain objects shaped like that JSON, with two changes this codec makes
 * on the way in: 64-bit integers become numbers and `body` becomes a Uint8Array. The names of
 * those fields are listed below; test/json-codec.test.js checks them against tether.proto.
 */

/** Fields of type int64 or uint64 anywhere in tether.proto, by their JSON name. */
export const LONG_FIELDS = new Set([
  "afterSequence",
  "incarnation",
  "lastSeenMs",
  "lastSequence",
  "messageId",
  "nonce",
  "readSequence",
  "sequence",
  "serverTimeMs",
  "timestampMs",
  "tokenExpiresMs",
  "version",
]);

/** Fields of type bytes anywhere in tether.proto, by their JSON name. */
export const BYTES_FIELDS = new Set(["body"]);

/** Encode bytes as standard base64 with padding, as the canonical JSON mapping does. */
export function toBase64(bytes) {
  let binary = "";
  // Chunks keep String.fromCharCode below the engines' argument limits.
  for (let start = 0; start < bytes.length; start += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(start, start + 0x8000));
  }
  return btoa(binary);
}

/** Decode standard or URL-safe base64, with or without padding. */
export function fromBase64(text) {
  let normal = text.replace(/-/g, "+").replace(/_/g, "/");
  while (normal.length % 4 !== 0) normal += "=";
  const binary = atob(normal);
  const bytes = new Uint8Array(binary.length);
  for (let index = 0; index < binary.length; index += 1) bytes[index] = binary.charCodeAt(index);
  return bytes;
}

function encodeValue(key, value) {
  return value instanceof Uint8Array ? toBase64(value) : value;
}

function normalize(value) {
  if (Array.isArray(value)) return value.map(normalize);
  if (value === null || typeof value !== "object") return value;
  const out = {};
  for (const [key, item] of Object.entries(value)) {
    if (LONG_FIELDS.has(key) && (typeof item === "string" || typeof item === "number")) {
      out[key] = Number(item);
    } else if (BYTES_FIELDS.has(key) && typeof item === "string") {
      out[key] = fromBase64(item);
    } else {
      out[key] = normalize(item);
    }
  }
  return out;
}

/** The JSON codec; pass it as the client's `codec` option (it is the default). */
export const jsonCodec = Object.freeze({
  subprotocol: "tether.v1.json",
  binary: false,
  /** Return the text message for a frame object. */
  encode(frame) {
    return JSON.stringify(frame, encodeValue);
  },
  /** Return the frame object in a text message; throws on text that is not a JSON object. */
  decode(data) {
    if (typeof data !== "string") throw new TypeError("expected a text message on tether.v1.json");
    const frame = JSON.parse(data);
    if (frame === null || typeof frame !== "object" || Array.isArray(frame)) {
      throw new TypeError("a tether.v1.json message must be a JSON object");
    }
    return normalize(frame);
  },
});
