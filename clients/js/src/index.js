/**
 * The tether JavaScript client: TetherClient, the JSON codec and the protocol's codes.
 *
 * The binary codec lives in protobuf-codec.js, which needs protobufjs; this module and the
 * ones it imports need nothing but a WebSocket class, so a page can load them as they are.
 */

export {
  PROTOCOL_VERSION,
  REFRESH_AT,
  STABLE_SESSION_MS,
  STATUSES,
  TetherClient,
  backoffDelay,
  directConversationId,
  randomId,
  statusName,
} from "./client.js";
export { GROUP_PREFIX } from "./groups.js";
export { Code, ConnectionClosed, RequestError, TRANSPORT_LOST, codeName, isFinal } from "./codes.js";
export { jsonCodec } from "./json-codec.js";
