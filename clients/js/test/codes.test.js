// The client's code table must be the one docs/protocol.md prints in section 6.1.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { Code, isFinal } from "../src/codes.js";

const DOC = new URL("../../../docs/protocol.md", import.meta.url);

function documentedCodes() {
  const lines = readFileSync(DOC, "utf8").split("\n");
  const start = lines.indexOf("### 6.1 Code table");
  assert.ok(start >= 0, "docs/protocol.md has no code table");
  const rows = {};
  for (const line of lines.slice(start)) {
    const match = /^\| *(\d+) *\| *`(\w+)` *\| *(\w+) *\|/.exec(line);
    if (match) rows[match[2]] = { code: Number(match[1]), marking: match[3] };
    else if (Object.keys(rows).length > 0 && !line.startsWith("|")) break;
  }
  return rows;
}

test("Code lists exactly the documented codes", () => {
  const rows = documentedCodes();
  assert.deepEqual(
    Object.fromEntries(Object.entries(rows).map(([name, row]) => [name, row.code])),
    { ...Code },
  );
});

test("isFinal agrees with the document's retry or final column", () => {
  for (const [name, row] of Object.entries(documentedCodes())) {
    assert.equal(isFinal(row.code), row.marking === "final", name);
  }
  assert.equal(isFinal(4321), false); // unknown reconnect code from a newer server
  assert.equal(isFinal(4999), true);
  assert.equal(isFinal(77), true); // unknown request error
});
