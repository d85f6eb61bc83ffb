/**
 * Error and disconnect codes of the tether protocol (docs/protocol.md, section 6).
 *
 * Codes below 4000 travel in Error frames: one request failed, the connection stays open.
 * Codes 4000 to 4499 close the connection and ask for a reconnect; 4500 to 4999 are final.
 * test/codes.test.js keeps this table in step with the document.
 */

/** Every code this version of the protocol defines, by name. */
export const Code = Object.freeze({
  BAD_REQUEST: 1,
  NOT_A_CONTACT: 2,
  UNAVAILABLE: 3,
  BODY_TOO_LARGE: 4,
  INTERNAL: 5,
  NOT_FOUND: 6,
  NOT_ALLOWED: 7,
  ALREADY_EXISTS: 8,
  LIMIT_REACHED: 9,
  SHUTDOWN: 4000,
  HEARTBEAT_TIMEOUT: 4001,
  SLOW_CONSUMER: 4002,
  SERVER_ERROR: 4003,
  OVERLOADED: 4004,
  CONNECT_TIMEOUT: 4005,
  BACKEND_UNAVAILABLE: 4006,
  RATE_LIMITED: 4007,
  PROTOCOL_ERROR: 4500,
  FRAME_TOO_LARGE: 4501,
  UNAUTHORIZED: 4502,
  TOKEN_EXPIRED: 4503,
  REPLACED: 4504,
  UNSUPPORTED_VERSION: 4505,
  FORBIDDEN: 4506,
  TOO_MANY_DEVICES: 4507,
});

/** Close code reported when the transport failed without a Disconnect frame. */
export const TRANSPORT_LOST = 1006;

const RETRY_REQUEST_CODES = new Set([Code.UNAVAILABLE, Code.INTERNAL]);

/**
 * Tell whether a client must not retry after this code.
 *
 * A Disconnect code from 4000 to 4499 means "reconnect", known or not, so a newer server can
 * add reconnect codes. Request errors are final except UNAVAILABLE and INTERNAL.
 */
export function isFinal(code) {
  if (code >= 4000) return !(code <= 4499);
  return !RETRY_REQUEST_CODES.has(code);
}

/** Return the name of a code, or "CODE_<n>" for one this table does not know. */
export function codeName(code) {
  if (code === TRANSPORT_LOST) return "TRANSPORT_LOST";
  for (const [name, value] of Object.entries(Code)) {
    if (value === code) return name;
  }
  return `CODE_${code}`;
}

/** An Error frame from the server, as a rejected promise's reason. */
export class RequestError extends Error {
  constructor(code, message) {
    super(`${codeName(code)} (${code}): ${message}`);
    this.name = "RequestError";
    this.code = code;
    this.final = isFinal(code);
  }
}

/** The client stopped for good: after a final code, or after close(). */
export class ConnectionClosed extends Error {
  constructor(code, reason) {
    super(`connection closed with ${codeName(code)} (${code}): ${reason}`);
    this.name = "ConnectionClosed";
    this.code = code;
    this.reason = reason;
  }
}
