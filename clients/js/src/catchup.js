/**
 * Message order and catch-up, as docs/protocol.md section 4.5 recommends.
 *
 * The live push is the fast path; sequence numbers are the truth. `Conversations` keeps, per
 * conversation, the highest sequence handed to the application (`last`). A live message one
 * above it is handed over at once, one at or below it is a duplicate and dropped, and one
 * further above it waits while Sync fetches the gap, oldest first. The Unread frame after
 * Connected lists the conversations this device is behind in, fetched the same way.
 *
 * A group deleted and created again under its id starts its conversation again at sequence 1.
 * Unread, SyncResult and the joined groups of GroupsChanged carry the group's incarnation,
 * which differs between the two, so a position taken in the old group is forgotten even when
 * the client was not told of the deletion (it had left the group, or was offline).
 *
 * This follows the Python SDK's `tether.client.catchup` step by step, so both clients behave
 * alike.
 */

import { Code, RequestError } from "./codes.js";

/** Messages per Sync page. */
export const SYNC_PAGE = 100;
/** Milliseconds between batches of DeliverAcks. */
export const ACK_INTERVAL_MS = 100;
/** DeliverAcks per batch: at most 50 per second. */
export const ACKS_PER_INTERVAL = 5;
/** Milliseconds between Sync requests: at most 40 per second. */
export const SYNC_INTERVAL_MS = 25;
// Together with heartbeats this stays below the server's default 100 frames per second.

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Thrown when no SyncResult arrives for a Sync in time. */
export class SyncTimeout extends Error {
  constructor(requestId, ms) {
    super(`no answer to Sync ${requestId} within ${ms} ms`);
    this.name = "SyncTimeout";
  }
}

/** Per-conversation order, deduplication and catch-up for one client. */
export class Conversations {
  /**
   * deliver(message) hands one message to the application. requestTimeoutMs bounds the wait
   * for each SyncResult. With autoAck, DeliverAcks follow what was handed over.
   */
  constructor({ deliver, deviceId, autoAck = true, requestTimeoutMs = 10_000, onFailure }) {
    this.deliver = deliver;
    this.deviceId = deviceId;
    this.autoAck = autoAck;
    this.requestTimeoutMs = requestTimeoutMs;
    this.onFailure = onFailure ?? (() => {});
    /** @type {Map<string, number>} highest sequence handed over, per conversation */
    this.last = new Map();
    this.waiting = new Map(); // conversation -> live messages held while it is fetched
    this.toFetch = new Set(); // conversations to sync, in order
    this.replies = new Map(); // request id -> {resolve, reject, timer}
    this.nextRequest = 1;
    this.send = null; // sends a frame object on the current connection, null between
    this.userId = "";
    this.worker = null;
    this.unacked = new Set();
    this.acker = null;
    this.nextSyncAt = 0;
    this.moreUnread = false;
    this.generation = 0; // bumped by stop(), so work of an old connection ends quietly
    this.resets = new Map(); // conversation -> times forgotten, so an older SyncResult is ignored
    this.incarnations = new Map(); // group conversation -> incarnation that `last` counts in
  }

  /**
   * Forget the position in a conversation that no longer exists, such as a deleted group: a
   * group created again under its id starts its sequence numbers at 1.
   */
  forget(conversation) {
    this.drop(conversation);
    this.incarnations.delete(conversation);
  }

  /**
   * Record the incarnations of groups this user joined, forgetting a position kept from
   * another incarnation. A member added back to the same group resumes where it left.
   */
  onJoined(groups) {
    for (const group of groups) this.checkIncarnation(group.conversationId, group.incarnation);
  }

  /** Start a new connection: forget its predecessor's requests, keep the positions. */
  connected(send, userId) {
    this.stop();
    this.send = send;
    this.userId = userId;
  }

  /** End the catch-up of a connection that closed; it resumes after the next Unread. */
  stop() {
    this.generation += 1;
    this.worker = null;
    this.acker = null;
    this.unacked.clear();
    for (const reply of this.replies.values()) {
      clearTimeout(reply.timer);
      reply.reject(new Error("connection closed"));
    }
    this.replies.clear();
    this.toFetch.clear();
    this.waiting.clear();
    this.moreUnread = false;
    this.send = null;
  }

  /** Queue a fetch of every conversation the server lists this device as behind in. */
  onUnread(unread) {
    for (const state of unread.conversations ?? []) {
      const conversation = state.conversationId;
      this.checkIncarnation(conversation, state.incarnation);
      const last = Math.max(this.last.get(conversation) ?? 0, state.readSequence ?? 0);
      this.last.set(conversation, last);
      if ((state.lastSequence ?? 0) > last) this.fetch(conversation);
    }
    if (unread.truncated) {
      // Asked for again once the listed conversations are fetched and acknowledged.
      this.moreUnread = true;
      this.startWorker();
    }
  }

  /** Hand a pushed message over, drop it as a duplicate, or hold it behind a gap. */
  onLive(message) {
    const conversation = message.conversationId;
    const waiting = this.waiting.get(conversation);
    if (waiting !== undefined) {
      waiting.push(message);
      return;
    }
    const last = this.last.get(conversation);
    const sequence = message.sequence ?? 0;
    if (sequence === (last ?? 0) + 1) {
      this.handOver(message);
      this.ack(conversation);
    } else if (last === undefined || sequence > last + 1) {
      // A gap, or a conversation with no position yet: fetch from this device's read marker
      // first, so nothing stored before this message is lost.
      this.waiting.set(conversation, [message]);
      this.fetch(conversation);
    }
  }

  /** Count this device's own message as seen, so it opens no gap. */
  onSendAck(ack) {
    const last = this.last.get(ack.conversationId);
    // With no position only sequence 1 is safe: a peer's message before it may be in flight.
    if (ack.sequence === (last ?? 0) + 1) this.last.set(ack.conversationId, ack.sequence);
  }

  /** Resolve the Sync a SyncResult answers; false if it is not ours. */
  onSyncResult(result) {
    const reply = this.replies.get(result.requestId);
    if (reply === undefined) return false;
    this.replies.delete(result.requestId);
    clearTimeout(reply.timer);
    reply.resolve(result);
    return true;
  }

  /** Fail the Sync an Error frame refers to; false if it is not ours. */
  onError(error) {
    const reply = this.replies.get(error.ref);
    if (reply === undefined) return false;
    this.replies.delete(error.ref);
    clearTimeout(reply.timer);
    reply.reject(new RequestError(error.code ?? 0, error.message ?? ""));
    return true;
  }

  /**
   * Send one Sync and return its SyncResult. `prefix` keeps request ids apart from the
   * client_message_ids that Error.ref also carries.
   */
  request(sync, prefix = "sync") {
    if (this.send === null) return Promise.reject(new Error("not connected"));
    const requestId = `${prefix}-${this.nextRequest++}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.replies.delete(requestId);
        reject(new SyncTimeout(requestId, this.requestTimeoutMs));
      }, this.requestTimeoutMs);
      this.replies.set(requestId, { resolve, reject, timer });
      this.send({ sync: { requestId, ...sync } });
    });
  }

  // Internals.

  /**
   * Record a group's incarnation; forget the position if it counted in another one, and
   * return true then. 0 (a direct conversation, or a server that sends none) changes nothing,
   * and a position whose incarnation was never learned is taken to belong to the first one.
   */
  checkIncarnation(conversation, incarnation) {
    if (!incarnation) return false;
    const held = this.incarnations.get(conversation);
    this.incarnations.set(conversation, incarnation);
    if (held === undefined || held === incarnation) return false;
    this.drop(conversation);
    return true;
  }

  /** Drop the position and pending work of a conversation whose group is gone. */
  drop(conversation) {
    this.last.delete(conversation);
    this.waiting.delete(conversation);
    this.toFetch.delete(conversation);
    this.unacked.delete(conversation);
    this.resets.set(conversation, (this.resets.get(conversation) ?? 0) + 1);
  }

  fetch(conversation) {
    this.toFetch.add(conversation);
    this.startWorker();
  }

  startWorker() {
    if (this.worker === null) this.worker = this.catchUp(this.generation);
  }

  async catchUp(generation) {
    try {
      while (this.toFetch.size > 0 && generation === this.generation) {
        const conversation = this.toFetch.values().next().value;
        const resets = this.resets.get(conversation) ?? 0;
        try {
          await this.sync(conversation, generation);
        } catch (error) {
          const notFound = error instanceof RequestError && error.code === Code.NOT_FOUND;
          if (!notFound || !conversation.startsWith("g:")) throw error;
          // Removed from the group, or it was deleted, before the fetch: nothing of it is left
          // to catch up, and a reconnect would not change that.
          this.waiting.delete(conversation);
          this.toFetch.delete(conversation);
          continue;
        }
        if (generation !== this.generation) return;
        // Forgotten meanwhile: fetched again if the group was created again, else dropped.
        if ((this.resets.get(conversation) ?? 0) !== resets) continue;
        const gapLeft = this.releaseWaiting(conversation);
        if (!gapLeft) this.toFetch.delete(conversation);
      }
      if (this.moreUnread && this.send !== null && generation === this.generation) {
        this.moreUnread = false;
        while (this.unacked.size > 0) await sleep(ACK_INTERVAL_MS); // the next list follows the acks
        await sleep(ACK_INTERVAL_MS); // time for the last acks to be stored
        if (generation === this.generation) this.send({ unread: {} });
      }
    } catch (error) {
      // The next connection lists what is still unread, so closing loses nothing.
      if (generation === this.generation) this.onFailure(error);
    } finally {
      if (generation === this.generation) this.worker = null;
    }
  }

  async sync(conversation, generation) {
    for (;;) {
      const wait = this.nextSyncAt - Date.now();
      if (wait > 0) await sleep(wait);
      this.nextSyncAt = Date.now() + SYNC_INTERVAL_MS;
      if (generation !== this.generation) return;
      const known = this.last.has(conversation);
      const resets = this.resets.get(conversation) ?? 0;
      const result = await this.request({
        conversationId: conversation,
        afterSequence: this.last.get(conversation) ?? 0,
        limit: SYNC_PAGE,
        fromReadMarker: !known,
      });
      if (generation !== this.generation) return;
      if ((this.resets.get(conversation) ?? 0) !== resets) return; // deleted meanwhile
      if (this.checkIncarnation(conversation, result.incarnation)) {
        // The page is of a group created since the position was taken, and continues from a
        // position in another group. Fetch again, from the read marker.
        this.toFetch.add(conversation);
        return;
      }
      const messages = result.messages ?? [];
      if (!this.last.has(conversation) && messages.length > 0) {
        this.last.set(conversation, messages[0].sequence - 1);
      }
      for (const message of messages) {
        if (message.sequence > (this.last.get(conversation) ?? 0)) this.handOver(message);
      }
      this.ack(conversation);
      if (!result.hasMore) return;
    }
  }

  /** Hand over held messages that continue the sequence; true if a gap remains. */
  releaseWaiting(conversation) {
    const held = [...(this.waiting.get(conversation) ?? [])].sort((a, b) => a.sequence - b.sequence);
    let last = this.last.get(conversation) ?? 0;
    const ready = [];
    let gap = false;
    for (const message of held) {
      if (message.sequence <= last) continue;
      if (message.sequence !== last + 1) {
        gap = true;
        break;
      }
      ready.push(message);
      last = message.sequence;
    }
    if (gap) {
      this.waiting.set(
        conversation,
        held.filter((message) => message.sequence > last),
      );
    } else {
      this.waiting.delete(conversation);
    }
    for (const message of ready) this.handOver(message);
    if (ready.length > 0) this.ack(conversation);
    return gap;
  }

  handOver(message) {
    this.last.set(message.conversationId, message.sequence);
    const own = message.sender === this.userId && message.senderDevice === this.deviceId;
    if (!own) this.deliver(message); // the application has its own sends from send()
  }

  /** Schedule a DeliverAck; acks go out at most every ACK_INTERVAL_MS per connection. */
  ack(conversation) {
    if (!this.autoAck || this.send === null) return;
    this.unacked.add(conversation);
    if (this.acker === null) this.acker = this.sendAcks(this.generation);
  }

  async sendAcks(generation) {
    try {
      while (this.unacked.size > 0 && generation === this.generation) {
        await sleep(ACK_INTERVAL_MS);
        if (generation !== this.generation || this.send === null) return;
        // A few at a time, to stay well below the server's frame rate.
        const batch = [...this.unacked].slice(0, ACKS_PER_INTERVAL);
        for (const conversation of batch) {
          this.unacked.delete(conversation);
          const sequence = this.last.get(conversation);
          this.send({ deliverAck: { conversationId: conversation, sequence } });
        }
      }
    } finally {
      if (generation === this.generation) this.acker = null;
    }
  }
}
