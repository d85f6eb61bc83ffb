/**
 * A real `tether serve` for the tests, started on free ports on 127.0.0.1.
 *
 * The Python interpreter comes from TETHER_PYTHON (the pytest wrapper sets it), else the
 * repository's .venv, else python3 on PATH. Every server is stopped by its process id.
 */

import { spawn, execFile } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const REPO = fileURLToPath(new URL("../../../", import.meta.url));
const SECRET = "js-test-secret-of-at-least-32-bytes-for-hs256";
/** Every wait in the tests is a multiple of this, stretched by TETHER_TEST_TIMEOUT_SCALE. */
export const TIMEOUT_MS = 5000 * Number(process.env.TETHER_TEST_TIMEOUT_SCALE ?? "1");

export function pythonPath() {
  if (process.env.TETHER_PYTHON) return process.env.TETHER_PYTHON;
  const venv = join(REPO, ".venv", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}

/** Return an HS256 JWT for user, signed with the test server's secret. */
export function tokenFor(user, { expiresInS } = {}) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const claims = { sub: user, iat: Math.floor(Date.now() / 1000) - 1 };
  if (expiresInS !== undefined) claims.exp = Math.floor(Date.now() / 1000) + expiresInS;
  const body = `${encode({ alg: "HS256", typ: "JWT" })}.${encode(claims)}`;
  const signature = createHmac("sha256", SECRET).update(body).digest("base64url");
  return `${body}.${signature}`;
}

/**
 * Start `tether serve` with short timeouts; resolves once it printed its ready line.
 * Returns {wsUrl, dataDir, addContacts(a, b), stop()}.
 */
export async function startServer(extraArgs = []) {
  const dataDir = mkdtempSync(join(tmpdir(), "tether-js-"));
  const args = [
    "-m", "tether", "serve",
    "--data-dir", dataDir,
    "--secret", SECRET,
    "--host", "127.0.0.1",
    "--tcp-port", "off",
    "--ws-port", "0",
    "--heartbeat-interval", "0.5",
    "--offline-timeout", "3",
    "--grace-period", "0.3",
    "--log-level", "warning",
    ...extraArgs,
  ];
  const child = spawn(pythonPath(), args, { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (chunk) => {
    stderr += chunk;
  });
  const ready = await new Promise((resolve, reject) => {
    let stdout = "";
    const timer = setTimeout(() => reject(new Error(`tether serve not ready: ${stderr}`)), 4 * TIMEOUT_MS);
    child.stdout.on("data", (chunk) => {
      stdout += chunk;
      const match = /tether ready .*ws=(\S+)/.exec(stdout);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`tether serve exited with ${code}: ${stderr}`));
    });
  });
  const exited = new Promise((resolve) => child.on("exit", resolve));
  return {
    wsUrl: `ws://${ready}`,
    dataDir,
    pid: child.pid,
    async addContacts(userA, userB) {
      await promisify(execFile)(pythonPath(), [
        "-m", "tether", "contacts", "add", userA, userB, "--data-dir", dataDir,
      ]);
    },
    /** Stop the server by its process id and remove its data folder. */
    async stop() {
      if (child.exitCode === null) {
        process.kill(child.pid, "SIGTERM");
        await exited;
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
    stderr: () => stderr,
  };
}
