/**
 * An in-memory stand-in for the browser's WebSocket class, for tests of the client's own
 * decisions (backoff, URL order, resends) without a network. It speaks the JSON codec: the
 * test reads what the client sent as frame objects and answers with frame objects.
 * Everything about the real server is tested against a real `tether serve` instead.
 */

import { jsonCodec } from "../src/json-codec.js";

export class FakeSocket {
  /** Every socket the client opened, in order. */
  static opened = [];

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeSocket.opened.push(this);
    queueMicrotask(() => {
      this.readyState = 1;
      this.onopen?.({});
    });
  }

  send(data) {
    this.sent.push(jsonCodec.decode(data));
  }

  close(code = 1000) {
    this.readyState = 3;
    this.closedWith = code;
  }

  /** Deliver a frame object from the "server". */
  receive(frame) {
    this.onmessage?.({ data: jsonCodec.encode(frame) });
  }

  /** End the connection from the "server" side without a Disconnect frame. */
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code, reason: "" });
  }

  /** Sent frames of one kind, e.g. "send". */
  sentOf(kind) {
    return this.sent.filter((frame) => frame[kind] !== undefined).map((frame) => frame[kind]);
  }
}

/** Resolve once predicate() is true, polling every few milliseconds; reject after ms. */
export async function waitFor(predicate, ms = 2000, what = "condition") {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** A Connected frame with the fields the client reads. */
export function connectedFrame(user = "alice", overrides = {}) {
  return {
    connected: {
      sessionId: "s-1",
      userId: user,
      heartbeatIntervalMs: 4000,
      offlineTimeoutMs: 60000,
      serverTimeMs: String(Date.now()),
      protocolVersion: 1,
      ...overrides,
    },
  };
}
