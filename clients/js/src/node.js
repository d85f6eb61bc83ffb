/**
 * Node-only helpers: the binary codec from the repository's tether.proto.
 *
 * Kept apart from the other modules, which also run in browsers, because it reads a file.
 */

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import { createProtobufCodec } from "./protobuf-codec.js";

/** Path of tether.proto in this repository, relative to this file. */
export const PROTO_PATH = fileURLToPath(
  new URL("../../../src/tether/protocol/tether.proto", import.meta.url),
);

/** Return the binary codec, parsed from the tether.proto at path. */
export function loadProtobufCodec(path = PROTO_PATH) {
  return createProtobufCodec(readFileSync(path, "utf8"));
}
