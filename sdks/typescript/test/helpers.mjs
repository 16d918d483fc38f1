// Starts real fovea nodes for the tests: the workspace's binary (FOVEA_BIN, or
// target/{debug,release}/fovea from the repository root), on loopback ports.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dirname, "../../..");

export function foveaBin() {
  const candidates = [process.env.FOVEA_BIN, join(root, "target/debug/fovea"), join(root, "target/release/fovea")];
  const bin = candidates.find((p) => p && existsSync(p));
  if (!bin) throw new Error("no fovea binary: run `cargo build -p fovea` first, or set FOVEA_BIN");
  return bin;
}

/** A free TCP port on loopback (for a node that must come back on the same one). */
export async function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
    s.on("error", rej);
  });
}

/**
 * Starts `fovea node` with a WebSocket transport; resolves with its URLs once it is ready.
 * `opts.ws`: the WebSocket port (default: any); `opts.dir`: its data dir; `opts.args`:
 * more flags; `opts.config`: a configuration file's text.
 */
export async function startNode(opts = {}) {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), "fovea-ts-"));
  const admin = opts.admin ? "127.0.0.1:0" : "off";
  const args = ["node", "--listen", "127.0.0.1:0", "--admin", admin, "--data-dir", dir, "--ws", `127.0.0.1:${opts.ws ?? 0}`];
  if (opts.config) {
    const file = join(dir, "fovea.toml");
    writeFileSync(file, opts.config);
    args.push("--config", file);
  }
  args.push(...(opts.args ?? []));
  const child = spawn(foveaBin(), args, { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  child.stderr.on("data", (d) => (log += d));
  const ready = await new Promise((res, rej) => {
    let out = "";
    const timer = setTimeout(() => rej(new Error(`node did not start:\n${log}`)), 20000);
    child.stdout.on("data", (d) => {
      out += d;
      if (out.includes("ready")) {
        clearTimeout(timer);
        res(out);
      }
    });
    child.on("exit", (code) => rej(new Error(`node exited (${code}):\n${log}`)));
  });
  const ws = ready.match(/wss?:\/\/[^ ,)]+/)[0];
  const quic = ready.match(/quic:\/\/[^ ,)]+/)[0];
  const adminUrl = ready.match(/admin (http:\/\/[^ ,)]+)/)?.[1];
  return {
    ws,
    quic,
    admin: adminUrl,
    ready,
    dir,
    cert: join(dir, "node.crt"),
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.on("exit", r));
      child.kill("SIGKILL");
      await exited;
    },
  };
}

/** Runs a `fovea` CLI command; resolves with its stdout. */
export function cli(args, { input } = {}) {
  return new Promise((res, rej) => {
    const child = spawn(foveaBin(), args, { stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.on("exit", (code) => (code === 0 ? res(out) : rej(new Error(`fovea ${args.join(" ")}: ${code}\n${err}`))));
    child.stdin.end(input ?? "");
  });
}

/** `promise`, or a failure after `ms`. */
export function within(promise, ms = 10000, what = "operation") {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, rej) => (timer = setTimeout(() => rej(new Error(`${what} timed out`)), ms))),
  ]);
}
