/**
 * Groups in the JavaScript client: GroupRequest frames matched to their GroupResult by
 * request id, and the objects the client hands over for Group, GroupsChanged and GroupCounts.
 *
 * It follows the Python SDK's `tether.client.groups`. A request that has no reply when the
 * connection drops is sent again on the next session, like an unacknowledged Send. That is
 * safe because every group request is idempotent (docs/groups.md): adding or removing a member
 * twice changes nothing, and a create of the same id by the same owner only adds members.
 */

import { RequestError } from "./codes.js";

/** Prefix of a group's conversation id; a Send to "g:" + group id goes to the group. */
export const GROUP_PREFIX = "g:";

/** Return the frozen object handed over for a `tether.v1.Group`. */
export function groupOf(item) {
  const groupId = item.groupId ?? "";
  return Object.freeze({
    groupId,
    conversationId: item.conversationId || GROUP_PREFIX + groupId,
    owner: item.owner ?? "",
    memberCount: item.memberCount ?? 0,
    // Differs between groups created under the same id one after the other; 0 if not sent.
    incarnation: item.incarnation ?? 0,
  });
}

/** Return the frozen object handed over for a `tether.v1.GroupCount`. */
export function groupCountOf(item) {
  return Object.freeze({
    groupId: item.groupId ?? "",
    online: item.online ?? 0, // proto3 JSON leaves zero out
    memberCount: item.memberCount ?? 0,
  });
}

/** The group requests of one client that wait for their GroupResult. */
export class GroupRequests {
  /** timeoutMs bounds the wait for each reply; idPrefix sets this client's request ids apart. */
  constructor({ timeoutMs, idPrefix }) {
    this.timeoutMs = timeoutMs;
    // Request ids start with "group-", so they never equal a Sync's or a Send's id, which
    // Error.ref carries too.
    this.idPrefix = `group-${idPrefix}-`;
    this.nextId = 1;
    this.waiting = new Map(); // request id -> {request, resolve, reject, timer}
  }

  /**
   * Send a GroupRequest with send (null between sessions: it goes out after the next
   * Connected) and resolve with its GroupResult. Rejects with RequestError if the server
   * refused it, and with an Error after timeoutMs.
   */
  request(action, groupId, userIds, send) {
    const requestId = this.idPrefix + this.nextId++;
    const request = { requestId, action, groupId, userIds: [...userIds] };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(requestId);
        reject(new Error(`group request ${requestId} timed out after ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.waiting.set(requestId, { request, resolve, reject, timer });
      if (send !== null) send({ groupRequest: request });
    });
  }

  /** Send every request still without a reply on a new session. */
  resend(send) {
    for (const { request } of this.waiting.values()) send({ groupRequest: request });
  }

  /** Resolve the request that a GroupResult replies to; false if it is not one of ours. */
  onResult(result) {
    return this.settle(result.requestId ?? "", (entry) => entry.resolve(result));
  }

  /** Fail the request an Error frame refers to; false if it is not one of ours. */
  onError({ code, message, ref }) {
    return this.settle(ref, (entry) => entry.reject(new RequestError(code, message)));
  }

  /** Fail every waiting request, when the client stops. */
  failAll(error) {
    for (const entry of this.waiting.values()) {
      clearTimeout(entry.timer);
      entry.reject(error);
    }
    this.waiting.clear();
  }

  settle(requestId, action) {
    const entry = this.waiting.get(requestId);
    if (entry === undefined) return false;
    this.waiting.delete(requestId);
    clearTimeout(entry.timer);
    action(entry);
    return true;
  }
}
