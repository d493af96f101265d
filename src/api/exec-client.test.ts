// The exec client against an agent that predates the ENV, CWD and TTY frames:
// what a VM restored from an older snapshot still runs in its RAM. The peer
// below behaves as that agent did (agent.c before dff07ab): the first frame
// must be EXEC, or the session ends with an ERROR frame.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, type IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { PassThrough } from "node:stream";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execInVm, EXEC_FAILED } from "./exec-client.js";
import { FRAME_ERROR, FRAME_EXEC, FRAME_EXIT, FrameReader, frame } from "../images/agent-protocol.js";

const dir = mkdtempSync(join(tmpdir(), "tsvisor-exec-client-"));
after(() => rmSync(dir, { recursive: true, force: true }));

async function oldAgentHost(): Promise<{ socket: string; close(): void }> {
  const socket = join(dir, `h${Math.random().toString(36).slice(2)}.sock`);
  const server = createServer((_req, res) => res.writeHead(404).end());
  server.on("upgrade", (_req: IncomingMessage, conn: Duplex) => {
    conn.write("HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: tsvisor-exec\r\n\r\n");
    const reader = new FrameReader();
    conn.on("data", (d: Buffer) => {
      const [first] = reader.push(d);
      if (!first) return;
      const status = Buffer.alloc(4);
      conn.end(first.type === FRAME_EXEC ? frame(FRAME_EXIT, 0, status) : frame(FRAME_ERROR, 0, Buffer.from("expected an EXEC frame first")));
    });
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  return { socket, close: () => server.close() };
}

function io() {
  const stderr = new PassThrough();
  let text = "";
  stderr.on("data", (d: Buffer) => (text += d));
  return { io: { stdin: new PassThrough(), stdout: new PassThrough(), stderr }, err: () => text };
}

test("an agent older than -e/-w/-t: a plain command still runs; with them, one line that says to restart the VM", async () => {
  const host = await oldAgentHost();
  try {
    const plain = io();
    assert.equal(await execInVm(host.socket, "a", ["true"], plain.io), 0);
    assert.equal(plain.err(), "");

    for (const opts of [{ env: ["A=1"] }, { cwd: "/tmp" }, { tty: true }]) {
      const withSetup = io();
      assert.equal(await execInVm(host.socket, "a", ["true"], withSetup.io, opts), EXEC_FAILED);
      assert.match(withSetup.err(), /^tsvisor: the guest agent: expected an EXEC frame first \(this VM's guest agent predates -e, -w and -t: .* restart the VM/);
      assert.equal(withSetup.err().split("\n").length, 2, withSetup.err());
    }
  } finally {
    host.close();
  }
});
